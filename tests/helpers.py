"""Test helpers shared across the suite: independent verification and a test consortium."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycose.keys.curves import Ed25519
from pycose.keys.keyparam import KpKty, OKPKpCurve, OKPKpX
from pycose.keys.keytype import KtyOKP
from pycose.keys.okp import OKPKey
from pycose.messages import Sign1Message

from device.protocol import codec, merkle, trust
from device.protocol.document import ZERO_HASH, document_hash, format_utc
from device.protocol.keys import KeyPair
from taxctl_base.processes import read_ready

ACME = {"name": "ACME Trading", "tax_id": "91350100M000100Y43"}


def invoice(
    unit_price: int = 4500,
    quantity: str = "2",
    *,
    tax_rate_bp: int = 1300,
    buyer: dict[str, str] | None = ACME,
    name: str = "Tea",
) -> dict[str, Any]:
    """A one-line ISSUE request body (the POS API's and the device's)."""
    line = {
        "name": name,
        "quantity": quantity,
        "unit_price": unit_price,
        "tax_rate_bp": tax_rate_bp,
    }
    return {"items": [line]} if buyer is None else {"buyer": dict(buyer), "items": [line]}


def pycose_verify(raw: bytes, public_key: bytes) -> dict[str, Any]:
    """Verify a document with the standard COSE library; return its payload."""
    message = Sign1Message.decode(raw)
    message.key = OKPKey.from_dict({KpKty: KtyOKP, OKPKpCurve: Ed25519, OKPKpX: public_key})
    assert message.verify_signature(), "pycose: signature does not verify"
    payload = codec.decode(bytes(message.payload))
    assert isinstance(payload, dict)
    return payload


def pycose_ok(raw: bytes, public_key: bytes) -> bool:
    """pycose_verify as a yes/no, for checkers that collect failures instead of raising."""
    try:
        pycose_verify(raw, public_key)
    except Exception:
        return False
    return True


def check_journal(documents: Sequence[bytes], public_key: bytes, first: int = 1) -> None:
    """Counters gapless from `first`, hash chain intact, every signature good (pycose)."""
    prev = ZERO_HASH if first == 1 else None
    for expected, raw in enumerate(documents, start=first):
        payload = pycose_verify(raw, public_key)
        assert payload["counter"] == expected, f"gap: expected {expected}, got {payload['counter']}"
        if prev is not None:
            assert payload["prev_hash"] == prev, f"hash chain broken at {expected}"
        prev = document_hash(raw)


@dataclass
class SigningConsortium:
    """Plays the chain for a device: bureau-signed node list, blocks, quorum receipts."""

    bureau: KeyPair = field(default_factory=lambda: trust.TRAINING_BUREAU)
    training: bool = True
    nodes: list[KeyPair] = field(default_factory=lambda: [KeyPair.generate() for _ in range(4)])
    chain_id: str = "test-chain"
    epoch: int = 1
    height: int = 0
    time: float | None = None  # block time of the next receipts (None: now)

    @property
    def raw(self) -> bytes:
        return trust.issue_consortium(
            self.bureau,
            self.chain_id,
            self.epoch,
            {f"node{i}": k.public_key for i, k in enumerate(self.nodes)},
            self.training,
            0,
        )

    def receipts(
        self,
        documents: Iterable[tuple[int, bytes]],
        device_id: str,
        signers: int | None = None,
        other_leaves: int = 3,
    ) -> list[dict[str, Any]]:
        """One block holding the documents (and some other devices' transactions)."""
        docs = list(documents)
        leaves = [os.urandom(32) for _ in range(other_leaves)] + [document_hash(d) for _, d in docs]
        tree = merkle.levels(leaves)
        self.height += 1
        header = {
            "chain_id": self.chain_id,
            "height": self.height,
            "prev_hash": bytes(32),
            "merkle_root": tree[-1][0],
            "time": format_utc(time.time() if self.time is None else self.time),
            "tx_count": len(leaves),
        }
        count = len(self.nodes) if signers is None else signers
        signatures = [
            {"node_id": f"node{i}", "signature": trust.sign_header(self.nodes[i], header)}
            for i in range(count)
        ]
        out = []
        for index, (counter, raw) in enumerate(docs, start=other_leaves):
            out.append(
                {
                    "device_id": device_id,
                    "counter": counter,
                    "doc_hash": document_hash(raw),
                    "position": index,
                    "proof": merkle.audit_path(tree, index),
                    "header": header,
                    "signatures": signatures,
                }
            )
        return out


@dataclass
class Process:
    proc: subprocess.Popen[str]
    ready: dict[str, Any]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)


def spawn(
    args: Sequence[str],
    *,
    timeout: float = 20,
    env: dict[str, str] | None = None,
    stderr: Path | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> Process:
    """Start `python -m taxctl ARGS` and wait for its ready line on stdout (`preexec_fn`
    runs in the child before it starts, to lower a limit, say)."""
    err = open(stderr, "ab") if stderr else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "taxctl", *args],
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
        env={**os.environ, **(env or {})},
        preexec_fn=preexec_fn,
    )
    if stderr:
        err.close()  # type: ignore[union-attr]
    ready = read_ready(proc, timeout)
    if ready is not None:
        return Process(proc, ready)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"taxctl {' '.join(args)} did not become ready (exit {proc.returncode})")


def run_taxctl(
    *args: str, timeout: float = 60, stdin: str | None = None, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """`python -m taxctl ARGS` as a user runs it, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "taxctl", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
        check=check,
    )


def python_for(drop: Sequence[str], tree: Path) -> tuple[str, str] | None:
    """(interpreter, PYTHONPATH) that the user a `setpriv ...` prefix `drop` switches to
    can run with `tree` and this interpreter's packages, if there is one."""
    site = [p for p in sys.path if p.endswith("site-packages")]
    path = os.pathsep.join([str(tree), *site])
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    # the venv's interpreter may live under a home only root can enter: then try the
    # system's build of the same version (same ABI, so the venv's packages load)
    for python in (sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if not os.path.exists(python):
            continue
        argv = [*drop, "env", f"PYTHONPATH={path}", python, "-c", "import aiohttp"]
        if subprocess.run(argv, capture_output=True, timeout=30).returncode == 0:
            return python, path
    return None


def export_documents(state: Path) -> list[dict[str, Any]]:
    out = run_taxctl("device", "export", "--state", str(state), check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    for row in rows:
        row["raw"] = base64.b64decode(row["cose_sign1"])
    return rows
