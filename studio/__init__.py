"""gpt-studio's terminal UI.

From the engine it imports only engine.config and engine.protocol, never torch, so it starts
instantly and never touches the GPU.
"""
