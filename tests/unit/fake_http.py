"""A transport that serves kakoi's HTTP client from a function instead of the network.

The registry unit tests use it to script responses that a real registry cannot be made to give
on demand, such as a 503 then a 200, a cut body or a redirect to another host. The e2e tests
use real registries.
"""

from kakoi.registry.http import ConnectError, Response

__all__ = ["FakeTransport", "ConnectError", "Response"]


class FakeTransport:
    """Calls `handler(request)` for each request; the handler returns a Response or raises."""

    def __init__(self, handler):
        self.handler = handler

    def handle(self, request):
        response = self.handler(request)
        response.request = request
        return response

    def close(self):
        pass
