"""A client generated from docs/pos-openapi.yaml by a standard generator
(openapi-python-client) issues and reprints an invoice through a real syncd with a printer:
the document is enough for an integrator who never reads syncd's code."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.shop import Shop
from tests.syncd.pos_contract import SPEC

GENERATOR = Path(sys.executable).with_name("openapi-python-client")
PACKAGE = "pos_api_generated"


@pytest.fixture
def generated(tmp_path: Path) -> Iterator[Any]:
    """The generated package, imported from a temporary directory."""
    if not GENERATOR.exists() and shutil.which("openapi-python-client") is None:
        pytest.skip("openapi-python-client is not installed (pip install '.[test]')")
    config = tmp_path / "generator.yaml"
    config.write_text("post_hooks: []\n")  # no formatter run: the code is imported, not read
    out = tmp_path / PACKAGE
    command = [
        str(GENERATOR) if GENERATOR.exists() else "openapi-python-client",
        "generate",
        "--path",
        str(SPEC),
        "--meta",
        "none",
        "--output-path",
        str(out),
        "--config",
        str(config),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Unable to" not in done.stdout + done.stderr, done.stdout + done.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def test_a_generated_client_issues_and_reprints(shop: Shop, generated: Any) -> None:
    shop.start_chain()
    shop.start_device()
    shop.start_syncd()
    issuing = importlib.import_module(f"{PACKAGE}.api.issuing.issue_invoice")
    by_number = importlib.import_module(f"{PACKAGE}.api.reading.reprint_invoice")
    by_counter = importlib.import_module(f"{PACKAGE}.api.reading.reprint_by_counter")
    models = importlib.import_module(f"{PACKAGE}.models")

    sale = models.InvoiceRequest(
        items=[models.Item(name="Tea", quantity="2", unit_price=4500, tax_rate_bp=1300)],
        buyer=models.Party(name="ACME Trading", tax_id="91350100M000100Y43"),
    )
    key = uuid.uuid4().hex
    with generated.Client(base_url=shop.api) as client:
        first = issuing.sync_detailed(client=client, body=sale, idempotency_key=key)
        assert first.status_code == 201, first.content
        invoice = first.parsed
        assert isinstance(invoice, models.IssuedDocument), invoice
        assert invoice.kind == models.Kind.INVOICE and invoice.total == 10170
        assert first.headers["Idempotency-Key"] == key == invoice.idempotency_key

        again = issuing.sync_detailed(client=client, body=sale, idempotency_key=key)
        assert again.status_code == 200 and again.parsed.counter == invoice.counter

        reprint = by_number.sync(invoice.code, invoice.number, client=client)
        assert isinstance(reprint, models.Document), reprint
        assert reprint.cose_sign1 == invoice.cose_sign1
        assert reprint.receipt.text == invoice.receipt.text

        narrow = by_counter.sync(
            invoice.counter, client=client, paper=models.ReprintByCounterPaper(58)
        )
        assert isinstance(narrow, models.Document) and narrow.counter == invoice.counter

        missing = by_counter.sync_detailed(10**6, client=client)
        assert missing.status_code == 404
        assert missing.parsed.error == models.ErrorCode.NOT_FOUND
