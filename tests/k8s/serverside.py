"""Server-side apply and create against the test's API server, as kubectl makes them: raw REST,
so that the status, the message and the warnings (Warning headers) are all seen."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Mapping

FIELD_MANAGER = "edgeoffload-tests"
_WARNING = re.compile(r'299 - "((?:[^"\\]|\\.)*)"')   # RFC 7234 warn-text, quotes escaped


@dataclass(frozen=True)
class Answer:
    """What the API server said to one request."""

    status: int
    message: str
    warnings: tuple[str, ...]

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300


class Server:
    """Raw REST calls (as kubectl makes them), so that status, message and warnings are all seen."""

    def __init__(self, control_plane: Any, api: Any) -> None:
        from kubernetes.dynamic import DynamicClient

        self.base = control_plane.server
        self.session = control_plane.session()
        self.discovery = DynamicClient(api).resources

    def url(self, obj: Mapping[str, Any], name: str | None = None) -> str:
        resource = self.discovery.get(api_version=obj["apiVersion"], kind=obj["kind"])
        namespace = (obj.get("metadata") or {}).get("namespace") if resource.namespaced else None
        return self.base + resource.path(name=name, namespace=namespace)

    def _answer(self, response: Any) -> Answer:
        try:
            message = response.json().get("message", "")
        except ValueError:
            message = response.text[:500]
        warnings = tuple(text.replace('\\"', '"') for text in _WARNING.findall(response.headers.get("Warning", "")))
        return Answer(response.status_code, message, warnings)

    def apply(self, obj: Mapping[str, Any], dry_run: bool = True) -> Answer:
        """Server-side apply (kubectl apply --server-side [--dry-run=server] --validate=strict)."""
        params = {"fieldManager": FIELD_MANAGER, "fieldValidation": "Strict", "force": "true"}
        if dry_run:
            params["dryRun"] = "All"
        response = self.session.patch(self.url(obj, obj["metadata"]["name"]), params=params, data=json.dumps(obj),
                                      headers={"Content-Type": "application/apply-patch+yaml"}, timeout=30)
        return self._answer(response)

    def create(self, obj: Mapping[str, Any], dry_run: bool = True) -> Answer:
        params = {"fieldValidation": "Strict", **({"dryRun": "All"} if dry_run else {})}
        return self._answer(self.session.post(self.url(obj), params=params, json=obj, timeout=30))
