"""Screens pushed over the conversation: approval, session browser, help, dialogs, loading."""
