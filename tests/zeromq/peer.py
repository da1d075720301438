"""A plain libzmq peer (pyzmq) for the ZeroMQ tests: it sends and reads plain frames,
exactly as given, and knows nothing of tower-mq.

Usage: peer.py MODE ARGS...
Messages are JSON: a list of messages, each a list of frames, each frame hex-encoded.
Every message a peer receives is printed as one JSON line: its frames, hex-encoded.

  push ENDPOINT MESSAGES      connect a PUSH to ENDPOINT and send MESSAGES
  pub HOST MESSAGES           bind an XPUB on HOST (random port, printed), wait for the
                              first subscription, then send MESSAGES
  pull HOST COUNT             bind a PULL on HOST (random port, printed), print COUNT messages
  sub ENDPOINT PREFIX COUNT   connect a SUB to ENDPOINT subscribed to PREFIX (hex), print
                              every message until COUNT of them did not end in the frame
                              b"probe"
  rep HOST COUNT              bind a REP on HOST (random port, printed), print COUNT
                              requests, answering each with its frames, the last one
                              upper-cased
  req ENDPOINT MESSAGES       connect a REQ to ENDPOINT, send each of MESSAGES and print
                              its reply
  dealer ENDPOINT MESSAGES    connect a DEALER to ENDPOINT, send each of MESSAGES as is
                              (no delimiter added) and print its reply
"""
import json
import sys

import zmq


def frames_of(text):
    return [[bytes.fromhex(frame) for frame in message] for message in json.loads(text)]


def show(frames):
    print(json.dumps([frame.hex() for frame in frames]), flush=True)


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    ctx = zmq.Context()
    if mode == "push":
        sock = ctx.socket(zmq.PUSH)
        sock.connect(args[0])
        for message in frames_of(args[1]):
            sock.send_multipart(message)
    elif mode == "pub":
        sock = ctx.socket(zmq.XPUB)
        print(sock.bind_to_random_port(args[0]), flush=True)
        subscription = sock.recv()
        assert subscription[:1] == b"\x01", f"not a subscription: {subscription!r}"
        for message in frames_of(args[1]):
            sock.send_multipart(message)
    elif mode == "pull":
        sock = ctx.socket(zmq.PULL)
        print(sock.bind_to_random_port(args[0]), flush=True)
        for _ in range(int(args[1])):
            show(sock.recv_multipart())
    elif mode == "sub":
        sock = ctx.socket(zmq.SUB)
        sock.connect(args[0])
        sock.setsockopt(zmq.SUBSCRIBE, bytes.fromhex(args[1]))
        count = 0
        while count < int(args[2]):
            frames = sock.recv_multipart()
            show(frames)
            if frames[-1] != b"probe":
                count += 1
    elif mode == "rep":
        sock = ctx.socket(zmq.REP)
        print(sock.bind_to_random_port(args[0]), flush=True)
        for _ in range(int(args[1])):
            frames = sock.recv_multipart()
            show(frames)
            sock.send_multipart(frames[:-1] + [frames[-1].upper()])
    elif mode in ("req", "dealer"):
        sock = ctx.socket(zmq.REQ if mode == "req" else zmq.DEALER)
        sock.connect(args[0])
        for message in frames_of(args[1]):
            sock.send_multipart(message)
            show(sock.recv_multipart())
    else:
        raise SystemExit(f"unknown mode {mode}")
    sock.close(linger=5000)
    ctx.term()


main()
