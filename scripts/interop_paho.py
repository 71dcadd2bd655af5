#!/usr/bin/env python3
"""Interop with Eclipse Paho for Python (paho-mqtt 2.x) against a running `ferrite serve`.

For MQTT 3.1.1 and 5.0 each: QoS 2 exactly once, retained set/replace/clear, will on an
abrupt disconnect, persistent session resume with a message queued while offline, shared
subscriptions; then MQTT over TLS and over WebSocket (`/mqtt`). Every wait is bounded; prints
one line per check and exits non-zero on the first failure.

Usage: interop_paho.py --mqtt HOST:PORT --tls PORT --ca CA.pem --http HOST:PORT
"""

import argparse
import queue
import ssl
import sys
import threading
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

WAIT = 10.0
VERSIONS = {"3.1.1": mqtt.MQTTv311, "5": mqtt.MQTTv5}


class Fail(Exception):
    pass


class Peer:
    """A Paho client with its messages on a queue and CONNACK/SUBACK as events."""

    def __init__(self, proto, client_id=None, transport="tcp", clean=True, expiry=None):
        self.proto = proto
        self.client_id = client_id or f"paho-{uuid.uuid4().hex[:10]}"
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=proto,
            transport=transport,
            clean_session=clean if proto != mqtt.MQTTv5 else None,
        )
        self.clean = clean
        self.expiry = expiry
        self.messages = queue.Queue()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.session_present = None
        self.granted = None
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_subscribe = self._on_subscribe

    def _on_connect(self, client, userdata, flags, reason, properties):
        if reason.is_failure:
            return
        self.session_present = flags.session_present
        self.connected.set()

    def _on_subscribe(self, client, userdata, mid, reasons, properties):
        self.granted = reasons
        self.subscribed.set()

    def connect(self, host, port):
        kwargs = {}
        if self.proto == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            if self.expiry is not None:
                props.SessionExpiryInterval = self.expiry
            kwargs = {"clean_start": self.clean, "properties": props}
        self.c.connect(host, port, keepalive=30, **kwargs)
        self.c.loop_start()
        if not self.connected.wait(WAIT):
            raise Fail(f"{self.client_id}: no CONNACK")
        return self

    def subscribe(self, topic, qos):
        self.subscribed.clear()
        self.c.subscribe(topic, qos)
        if not self.subscribed.wait(WAIT):
            raise Fail(f"{self.client_id}: no SUBACK for {topic}")

    def publish(self, topic, payload, qos=1, retain=False):
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(WAIT)
        if not info.is_published():
            raise Fail(f"{self.client_id}: publish to {topic} not acknowledged")

    def expect(self, what):
        try:
            return self.messages.get(timeout=WAIT)
        except queue.Empty:
            raise Fail(f"{self.client_id}: expected {what}, got nothing") from None

    def stop(self):
        self.c.disconnect()
        self.c.loop_stop()


def check(name, ok, detail=""):
    if not ok:
        raise Fail(f"{name}: {detail}")
    print(f"paho: ok   {name}")


def marker_after(sub, pub, topic, what):
    """Publish a marker and return what `sub` received before it (proves absence)."""
    pub.publish(topic, b"marker", qos=1)
    before = []
    while True:
        m = sub.expect(f"the marker after {what}")
        if m.payload == b"marker":
            return before
        before.append(m)


def suite(version, proto, host, port):
    tag = f"interop/{uuid.uuid4().hex[:6]}"
    pub = Peer(proto).connect(host, port)

    # QoS 2: exactly once, at QoS 2.
    sub = Peer(proto).connect(host, port)
    sub.subscribe(f"{tag}/q2", 2)
    pub.publish(f"{tag}/q2", b"exactly", qos=2)
    m = sub.expect("the QoS 2 message")
    extra = marker_after(sub, pub, f"{tag}/q2", "the QoS 2 message")
    check(f"{version} QoS 2 delivered once at QoS 2", m.payload == b"exactly" and m.qos == 2 and not extra,
          f"{m.payload!r} qos {m.qos}, then {len(extra)} more")

    # Retained: set, replace, clear.
    pub.publish(f"{tag}/ret", b"one", qos=1, retain=True)
    pub.publish(f"{tag}/ret", b"two", qos=1, retain=True)
    late = Peer(proto).connect(host, port)
    late.subscribe(f"{tag}/ret", 1)
    m = late.expect("the retained message")
    check(f"{version} retained replaced, retain flag set", m.payload == b"two" and m.retain, f"{m.payload!r} retain={m.retain}")
    late.stop()
    pub.publish(f"{tag}/ret", b"", qos=1, retain=True)
    later = Peer(proto).connect(host, port)
    later.subscribe(f"{tag}/ret", 1)
    extra = marker_after(later, pub, f"{tag}/ret", "a cleared retained message")
    check(f"{version} empty retained payload clears it", not extra, f"got {[x.payload for x in extra]}")
    later.stop()

    # Will on an abrupt disconnect.
    sub.subscribe(f"{tag}/will", 1)
    dying = Peer(proto)
    dying.c.will_set(f"{tag}/will", b"gone", qos=1)
    dying.connect(host, port)
    dying.c.loop_stop()
    dying.c.socket().close()  # no DISCONNECT: the server publishes the will
    m = sub.expect("the will")
    check(f"{version} will published on abrupt close", m.payload == b"gone", repr(m.payload))

    # Persistent session: subscribe, go away, a message is queued, come back.
    cid = f"paho-keep-{uuid.uuid4().hex[:6]}"
    keep = Peer(proto, client_id=cid, clean=False, expiry=300).connect(host, port)
    keep.subscribe(f"{tag}/keep", 1)
    keep.stop()
    pub.publish(f"{tag}/keep", b"while away", qos=1)
    back = Peer(proto, client_id=cid, clean=False, expiry=300).connect(host, port)
    m = back.expect("the queued message")
    check(f"{version} persistent session resumed with its queued message",
          back.session_present and m.payload == b"while away", f"present={back.session_present} {m.payload!r}")
    back.stop()
    gone = Peer(proto, client_id=cid, clean=True, expiry=0).connect(host, port)
    gone.stop()

    # Shared subscription: each message to one member, both members used.
    a = Peer(proto).connect(host, port)
    b = Peer(proto).connect(host, port)
    a.subscribe(f"$share/g/{tag}/shared", 1)
    b.subscribe(f"$share/g/{tag}/shared", 1)
    merged = queue.Queue()
    a.c.on_message = lambda c, u, m: merged.put(("a", m.payload))
    b.c.on_message = lambda c, u, m: merged.put(("b", m.payload))
    for i in range(10):
        pub.publish(f"{tag}/shared", f"s{i}".encode(), qos=1)
    got = {"a": [], "b": []}
    for _ in range(10):
        try:
            who, payload = merged.get(timeout=WAIT)
        except queue.Empty:
            raise Fail(f"{version} shared: only {got} of 10") from None
        got[who].append(payload)
    total = sorted(got["a"] + got["b"])
    check(f"{version} shared subscription splits 10 messages between members",
          total == sorted(f"s{i}".encode() for i in range(10)) and got["a"] and got["b"],
          f"a={len(got['a'])} b={len(got['b'])}")
    for p in (a, b, sub, pub):
        p.stop()


def transport(name, host, port, proto, tls_ca=None, ws=False):
    tag = f"interop/{uuid.uuid4().hex[:6]}"
    def make():
        p = Peer(proto, transport="websockets" if ws else "tcp")
        if ws:
            p.c.ws_set_options(path="/mqtt")
        if tls_ca:
            p.c.tls_set(ca_certs=tls_ca, cert_reqs=ssl.CERT_REQUIRED)
        return p.connect(host, port)
    sub, pub = make(), make()
    sub.subscribe(f"{tag}/t", 1)
    pub.publish(f"{tag}/t", b"over " + name.encode(), qos=1)
    m = sub.expect(f"a message over {name}")
    check(f"{name} publish/subscribe", m.payload == b"over " + name.encode(), repr(m.payload))
    sub.stop()
    pub.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mqtt", required=True)
    ap.add_argument("--tls", type=int, required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--http", required=True)
    args = ap.parse_args()
    host, port = args.mqtt.rsplit(":", 1)
    hhost, hport = args.http.rsplit(":", 1)
    try:
        for version, proto in VERSIONS.items():
            suite(version, proto, host, int(port))
        transport("TLS (MQTT 5)", "localhost", args.tls, mqtt.MQTTv5, tls_ca=args.ca)
        transport("TLS (3.1.1)", "localhost", args.tls, mqtt.MQTTv311, tls_ca=args.ca)
        transport("WebSocket (MQTT 5)", hhost, int(hport), mqtt.MQTTv5, ws=True)
        transport("WebSocket (3.1.1)", hhost, int(hport), mqtt.MQTTv311, ws=True)
    except Fail as e:
        print(f"paho: FAIL {e}", file=sys.stderr)
        sys.exit(1)
    print("paho: all passed")


if __name__ == "__main__":
    main()
