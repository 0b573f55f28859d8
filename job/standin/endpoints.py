"""The stand-in's public URLs, shared by the server itself and the client that drives it from afar."""

from __future__ import annotations


class Endpoints:
    """``token_url``, ``authorize_url``, ``revoke_url`` and ``api_url`` below ``base_url``."""

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``; given by the subclass."""
        raise NotImplementedError

    @property
    def token_url(self) -> str:
        """The token endpoint."""
        return f"{self.base_url}/oauth2/token"

    @property
    def authorize_url(self) -> str:
        """The authorize endpoint."""
        return f"{self.base_url}/oauth2/authorize"

    @property
    def revoke_url(self) -> str:
        """The revoke endpoint."""
        return f"{self.base_url}/oauth2/revoke"

    @property
    def api_url(self) -> str:
        """The REST API base, ``base_url + "/1.0"``."""
        return f"{self.base_url}/1.0"
