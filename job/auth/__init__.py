"""Authorization: the token file's value (:mod:`job.auth.tokens`), the token endpoint's answer
(:mod:`job.auth.answer`), the OAuth 2 client (:mod:`job.auth.oauth`) and legacy OAuth 1.0a (:mod:`job.auth.oauth1`).

Pure protocol and data: the HTTP session is passed in; nothing here knows where tokens are kept.
"""
