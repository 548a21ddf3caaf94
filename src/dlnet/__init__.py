"""dlnet: a peer-to-peer network of encoders and validators (docs/PROTOCOL.md).

``dlnet.protocol`` is the pure protocol, ``dlnet.node`` the node that runs it, ``dlnet.data``
the shipped corpus and labelled sets."""
