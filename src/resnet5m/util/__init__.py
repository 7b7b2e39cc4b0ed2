"""Small shared helpers (validation messages, formatting)."""
