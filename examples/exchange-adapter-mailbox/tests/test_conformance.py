"""The mailbox adapter keeps the adapter contract: exchange's conformance kit on a real RabbitMQ.

Needs a broker: --conformance-amqp-url, $EXCHANGE_CONFORMANCE_AMQP_URL, or RabbitMQ's
default guest account on 127.0.0.1:5672 (the kit uses a private topology prefix and
deletes it afterwards).
"""

from exchange.conformance import conformance_tests
from exchange_mailbox.adapter import MailboxAdapter
from exchange_mailbox.probe import MailboxProbe

# `adapter=` lets the kit run from a checkout; installed, the entry point alone would do.
TestMailboxConformance = conformance_tests(MailboxProbe, adapter=MailboxAdapter)
