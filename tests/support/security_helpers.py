"""Helpers of the security tests: the CLI as a subprocess, Mosquitto password
entries, and MQTT v5 devices that report each PUBACK's reason code."""

from __future__ import annotations

import base64
import hashlib
import os
import ssl
import threading
from collections.abc import Iterable
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

# mosquitto_passwd's default (-H sha512-pbkdf2): "$7$<iterations>$<salt>$<hash>", base64.
MOSQUITTO_PBKDF2_ITERATIONS = 101


def mosquitto_password_entry(user: str, password: str) -> str:
    """One line of a Mosquitto password file, as ``mosquitto_passwd`` writes it."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, MOSQUITTO_PBKDF2_ITERATIONS)
    encoded = base64.b64encode(salt).decode(), base64.b64encode(digest).decode()
    return f"{user}:$7${MOSQUITTO_PBKDF2_ITERATIONS}${encoded[0]}${encoded[1]}"


def device_publish(
    port: int, user: str, password: str, ca: Path, messages: Iterable[tuple[str, bytes]], timeout: float = 30
) -> list[ReasonCode]:
    """Publish as device ``user`` over TLS with MQTT v5 and QoS 1; the PUBACK reason of each message."""
    pending = list(messages)
    codes: dict[int, ReasonCode] = {}
    done = threading.Event()

    def on_publish(_c: paho.Client, _u: object, mid: int, reason: ReasonCode, _p: object) -> None:
        codes[mid] = reason
        if len(codes) == len(pending):
            done.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"device-{user}", protocol=paho.MQTTv5)
    client.username_pw_set(user, password)
    client.tls_set(ca_certs=str(ca), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        mids = [client.publish(topic, payload, qos=1).mid for topic, payload in pending]
        if not done.wait(timeout):
            raise TimeoutError(f"no PUBACK for every message of {user}")
        return [codes[mid] for mid in mids]
    finally:
        client.disconnect()
        client.loop_stop()
