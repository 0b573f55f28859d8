"""The AWeber REST API as tasks see it: :class:`job.api.client.ApiClient`, paced, retried, time-limited."""
