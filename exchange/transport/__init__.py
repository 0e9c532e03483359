"""The AMQP transport: RabbitMQ topology as code, the outbox relay, the consumer.

This is the only package that knows aio-pika. It carries frames between nodes and
decides, from what the service answers, whether a delivery is acked, retried or
dead-lettered.
"""
