"""The commands beside ``run``: login and revoke, status, the store and its connections, the demo."""
