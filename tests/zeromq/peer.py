"""A libzmq peer (pyzmq) for tests/zeromq.rs: speaks tower-mq's ZeroMQ framing.

Usage: peer.py MODE ENDPOINT COUNT
  pull  bind a PULL on ENDPOINT's host (random port, printed), receive COUNT messages,
        print each decoded as one JSON line
  push  connect a PUSH to ENDPOINT, send COUNT framed messages
  rep   bind a REP (random port, printed), answer COUNT requests with the payload
        upper-cased, echoing the header block (so the correlation id)
  req   connect a REQ to ENDPOINT, send COUNT requests, print each reply as JSON
Frames: [destination, header block (b"TMQ\\x01", flags, tag/u32 length/value fields), payload].
"""
import json
import struct
import sys

import zmq

MAGIC = b"TMQ\x01"
NAMES = {1: "key", 4: "message_id", 5: "correlation_id", 6: "reply_to", 7: "content_type", 8: "content_encoding"}


def decode(frames):
    assert len(frames) == 3, f"expected 3 frames, got {len(frames)}"
    topic, block, payload = frames
    assert block[:4] == MAGIC, f"bad magic {block[:4]!r}"
    out = {"topic": topic.decode(), "payload": payload.decode(), "persistent": bool(block[4] & 1), "headers": {}}
    rest = block[5:]
    while rest:
        tag, length = struct.unpack(">BI", rest[:5])
        value, rest = rest[5:5 + length], rest[5 + length:]
        assert len(value) == length, "truncated field"
        if tag == 0x10:
            (name_len,) = struct.unpack(">I", value[:4])
            out["headers"][value[4:4 + name_len].decode()] = value[4 + name_len:].decode()
        elif tag == 2:
            out["priority"] = value[0]
        elif tag == 3:
            out["ttl_ms"] = struct.unpack(">Q", value)[0]
        else:
            out[NAMES[tag]] = value.decode()
    return out


def field(tag, value):
    return struct.pack(">BI", tag, len(value)) + value


def encode(topic, payload, message_id, headers, correlation_id=None):
    block = MAGIC + b"\x01" + field(4, message_id.encode())
    if correlation_id is not None:
        block += field(5, correlation_id.encode())
    for name, value in headers.items():
        n = name.encode()
        block += field(0x10, struct.pack(">I", len(n)) + n + value.encode())
    return [topic.encode(), block, payload.encode()]


def main():
    mode, endpoint, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ctx = zmq.Context()
    if mode == "pull":
        sock = ctx.socket(zmq.PULL)
        print(sock.bind_to_random_port(endpoint), flush=True)
        for _ in range(count):
            print(json.dumps(decode(sock.recv_multipart())), flush=True)
    elif mode == "push":
        sock = ctx.socket(zmq.PUSH)
        sock.connect(endpoint)
        for i in range(count):
            sock.send_multipart(encode("from-libzmq", f"py-{i}", f"py-id-{i}", {"lang": "python", "zmq": zmq.zmq_version()}))
    elif mode == "rep":
        sock = ctx.socket(zmq.REP)
        print(sock.bind_to_random_port(endpoint), flush=True)
        for _ in range(count):
            topic, block, payload = sock.recv_multipart()
            decode([topic, block, payload])
            sock.send_multipart([topic, block, payload.upper()])
    elif mode == "req":
        sock = ctx.socket(zmq.REQ)
        sock.connect(endpoint)
        for i in range(count):
            sock.send_multipart(encode("rpc", f"req-{i}", f"req-id-{i}", {"lang": "python"}, f"corr-{i}"))
            print(json.dumps(decode(sock.recv_multipart())), flush=True)
    else:
        raise SystemExit(f"unknown mode {mode}")
    sock.close(linger=5000)
    ctx.term()


main()
