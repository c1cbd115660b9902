"""Fuzz the admission webhook's pure function (``msm.webhook.review.review``) with JSON bytes.

``review`` must answer every body, with a rejection when it is not a usable
AdmissionReview: any exception out of it is a crash.  Its answer must also be what
the server can send: a 200 AdmissionReview or a 4xx ``v1 Status``, serialisable as
JSON, and a patch only for a Pod.
"""

from __future__ import annotations

import json

import atheris
import fuzzlib

with atheris.instrument_imports(include=["msm"]):
    from msm.webhook.review import InjectConfig, review

NAME = "admission_review"
KNOWN: tuple[fuzzlib.KnownBug, ...] = ()
CONFIG = InjectConfig(stub_image="registry.example/msm:1.0")


def check(data: bytes) -> None:
    status, answer = review(data, CONFIG)
    json.dumps(answer)
    if status == 200:
        response = answer["response"]  # type: ignore[typeddict-item]
        if answer.get("kind") != "AdmissionReview" or response.get("allowed") is not True:
            raise AssertionError(f"a 200 that is not an allowing AdmissionReview: {answer!r:.300}")
    elif not 400 <= status < 500 or answer.get("kind") != "Status":
        raise AssertionError(f"answered {status} {answer!r:.300}")


def test_one(data: bytes) -> None:
    try:
        check(data)
    except Exception as exc:
        if fuzzlib.tolerate(exc, KNOWN):
            return
        raise


if __name__ == "__main__":
    fuzzlib.main(test_one, NAME, fuzzlib.seeds(NAME, ["k8s/webhook_*.json"]))
