"""The app's ``/metrics`` read as Prometheus reads it: each sample by its name and labels."""

from __future__ import annotations

import warnings

import requests
from prometheus_client.parser import text_string_to_metric_families
from urllib3.exceptions import InsecureRequestWarning

from tests.server_process import AppProcess

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(app: AppProcess, headers: dict[str, str] | None = None) -> Samples:
    """The samples now; an https server's certificate is its own tests' concern, not checked here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureRequestWarning)
        response = requests.get(f"{app.url}/metrics", headers=headers, timeout=10, verify=not app.https)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)
