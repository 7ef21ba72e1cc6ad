"""gpt-studio's terminal UI.

From the engine it imports only engine.contract, never torch, so it starts
instantly and never touches the GPU.
"""
