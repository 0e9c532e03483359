"""The pull adapter: the E-Office polls the gateway's inbox, as with the national hub's API.

By the time :meth:`PullAdapter.deliver` is called the bus has already verified
the envelope and stored it in the agency's inbox (the store keeps every incoming
message there), so handing it over means only one thing: let the inbox show it.
Answering ``delivered`` moves the inbox entry to *handed over*, which is what
makes it visible to the E-Office, and sends the sender its signed receipt.

The E-Office side uses the HTTP gateway with an API token of its agency
(docs/API.md): list the inbox, fetch one message (header, signed envelope,
attachments), acknowledge it once registered; statuses and documents go out
through the same gateway. In-process callers use the same three use cases on
:class:`~exchange.service.ExchangeService`: ``inbox``, ``fetch``, ``acknowledge``.

Nothing can fail here that the E-Office could cause, so the adapter never
answers transient or permanent; it takes no options.
"""

from __future__ import annotations

from exchange.adapters.base import Adapter, DeliveryResult, Incoming


class PullAdapter(Adapter):
    """Hands a message over by making it visible in the gateway's inbox."""

    kind = "pull"
    wants_receipts = False

    async def deliver(self, message: Incoming) -> DeliveryResult:
        # The store already holds the envelope and attachments; the bus marks the
        # entry handed over when we answer, and fetch only serves handed-over entries.
        return DeliveryResult.delivered()
