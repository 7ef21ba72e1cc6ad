"""Reusable pieces of the studio's panes: form rows, the size summary, small dialogs."""
