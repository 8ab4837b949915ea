"""The plain reader: paho reads the socket and decodes every packet, and
acknowledges each message with its public ``ack``.

Slower than the fast reader (a few objects and system calls per message) but it
uses nothing of paho that is not public API, so a paho release the fast reader
was not verified against cannot break it. One difference in behaviour: while
the window is full (say, the database is down for minutes) the broker's
PINGRESPs go unread, so after about two keepalive periods paho drops the link
and the daemon reconnects; nothing is lost (what was not acknowledged comes back).
"""

from __future__ import annotations

from collections.abc import Sequence

from bridge.ingest.link import Publish
from bridge.ingest.paho_link import PahoLink

__all__ = ["PlainLink"]


class PlainLink(PahoLink):
    """A broker connection read by paho itself."""

    def _read(self) -> None:
        self.client.loop_read()  # one packet; PUBLISH arrives through _on_paho_message

    def ack(self, messages: Sequence[Publish]) -> None:
        for message in messages:
            self.client.ack(message.mid, message.qos)
        self._write_now()
