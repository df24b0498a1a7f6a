"""integration_events.bridges.frames: the frames of one basic.publish, byte for byte what
pika's own marshalling writes for the same message (the publisher sends ours instead of
pika's; test_amqp_publisher.py sends them to a real broker)."""

from __future__ import annotations

import pika
import pika.frame
import pika.spec
import pytest

from integration_events.bridges import WireEncodingError, encode_message, frames
from integration_events.bridges.naming import Naming

HEADERS = {"cap-msg-id": "0190f3a1-7b7e-7d7e-8a2b-4c5d6e7f8091", "cap-msg-name": "billing.paid",
           "cap-msg-type": "Paid", "cap-senttime": "05/16/2025 07:04:05 +00:00",
           "cap-corr-id": "0190f3a1", "cap-corr-seq": "0", "tenant": "é-ünïcode ✓"}


def pika_frames(channel: int, exchange: str, key: str, body: bytes, headers: dict[str, str],
                frame_max: int) -> bytes:
    """What pika.Connection._send_message marshals for the same publish."""
    properties = pika.BasicProperties(delivery_mode=2, content_type="application/json",
                                      headers=dict(headers))
    method = pika.spec.Basic.Publish(exchange=exchange, routing_key=key, mandatory=True)
    out = [pika.frame.Method(channel, method).marshal(),
           pika.frame.Header(channel, len(body), properties).marshal()]
    room = frame_max - pika.spec.FRAME_HEADER_SIZE - pika.spec.FRAME_END_SIZE
    out += [pika.frame.Body(channel, body[i:i + room]).marshal()
            for i in range(0, len(body), room)]
    return b"".join(out)


def ours(channel: int, exchange: str, key: str, body: bytes, headers: dict[str, str],
         frame_max: int) -> bytes:
    return frames.publish_frames(
        channel, frames.short_string(exchange), key, body,
        content_type=frames.short_string("application/json"), headers=headers,
        delivery_mode=2, frame_max=frame_max)


@pytest.mark.parametrize(("body", "frame_max"), [
    (b'{"N":1}', 131072),
    (b"", 131072),  # no body frame at all
    (b"x" * 4088, 4096),  # exactly one full body frame
    (b"y" * 10_000, 4096),  # three body frames, the last one short
])
def test_same_bytes_as_pika(body: bytes, frame_max: int) -> None:
    args = (7, "cap.default.router", "billing.paid", body, HEADERS, frame_max)
    assert ours(*args) == pika_frames(*args)


def test_pika_reads_our_frames_back() -> None:
    data = ours(1, "cap.default.router", "billing.paid", b'{"N":1}', HEADERS, 131072)
    read, frames_read = 0, []
    while read < len(data):
        used, frame = pika.frame.decode_frame(data[read:])
        assert used, "pika could not decode a frame"
        read += used
        frames_read.append(frame)
    method, header, body = frames_read
    assert method.method.exchange == "cap.default.router"
    assert method.method.routing_key == "billing.paid" and method.method.mandatory
    assert header.properties.headers == HEADERS
    assert header.properties.delivery_mode == 2 and header.body_size == 7
    assert body.fragment == b'{"N":1}'


def test_names_over_255_bytes_fail_the_message_at_encoding() -> None:
    """AMQP short strings hold 255 bytes: a longer routing key or header name is the
    message's fault (fails at once with the reason), not the connection's."""
    with pytest.raises(WireEncodingError, match="over 255 bytes"):
        encode_message(topic="t." + "é" * 130, message_id="1", content="{}", headers={},
                       naming=Naming.PASCAL)
    with pytest.raises(WireEncodingError, match="over 255 bytes"):
        encode_message(topic="t.x", message_id="1", content="{}",
                       headers={"h" * 256: "v"}, naming=Naming.PASCAL)
    with pytest.raises(ValueError, match="longer than 255 bytes"):
        frames.short_string("k" * 256)
    with pytest.raises(TypeError, match="not str"):
        frames.string_table({"n": 1})  # type: ignore[dict-item]
