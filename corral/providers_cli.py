"""`corral providers add|list|remove` and `corral fallbacks set|list|delete` (issue 14).

Talks to AdminService like `corral status`. `providers add` without --models discovers the
provider's model list with the credential, resolved here as an edge would (the operator's
CORRAL_CREDENTIAL_<REF> or --credentials-dir); only the reference is sent to the control plane.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from typing import Any

from google.protobuf import json_format

from corral import admin_client
from corral.credentials import Credentials, MissingCredential, from_environ
from corral.status import StatusError
from corral.tls import client_context
from corral.v1 import providers_pb2

TYPES = ("openai", "anthropic", "gemini", "azure", "openai-compatible")
_ENUM = {
    name: getattr(providers_pb2, "PROVIDER_TYPE_" + name.upper().replace("-", "_"))
    for name in TYPES
}
# Same public endpoints as the control plane's defaults (controlplane/hosted.py).
_DEFAULT_BASE = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com/v1beta/openai",
}
COMMANDS = ("providers", "fallbacks")


def register(sub: Any) -> None:
    """Add the two subcommands to `corral`'s parser."""
    providers = sub.add_parser("providers", help="hosted providers as backends")
    verbs = providers.add_subparsers(dest="verb", required=True)
    add = verbs.add_parser("add", help="declare (or replace) a hosted provider")
    add.add_argument("name")
    add.add_argument("--type", required=True, choices=TYPES)
    add.add_argument("--base-url", default="", help="as the provider's SDK takes it")
    add.add_argument("--credential", required=True, help="credential REFERENCE, not the key")
    add.add_argument("--models", default="", help="m1,m2 (default: discovered)")
    add.add_argument("--api-version", default="", help="Azure OpenAI api-version")
    add.add_argument("--priority", type=int, default=-100)
    add.add_argument("--max-concurrency", type=int, default=0)
    add.add_argument("--credentials-dir", help="where discovery finds the credential file")
    add.add_argument("--extra-ca-file", help="CA bundle also trusted for discovery")
    for verb in ("list", "remove"):
        p = verbs.add_parser(verb, help=f"{verb} hosted providers")
        if verb == "remove":
            p.add_argument("name")
    fallbacks = sub.add_parser("fallbacks", help="fallback chains per model or alias")
    fverbs = fallbacks.add_subparsers(dest="verb", required=True)
    fset = fverbs.add_parser("set", help="set MODEL's chain: TARGET [TARGET...]")
    fset.add_argument("model")
    fset.add_argument("targets", nargs="+", help="local model/alias or PROVIDER/MODEL")
    fset.add_argument("--on", default="", help="conditions (default connect,timeout,5xx,429)")
    fset.add_argument("--queue-wait", type=float, default=0.0, help="seconds; 0: edge default")
    fverbs.add_parser("list", help="list fallback chains")
    fdel = fverbs.add_parser("delete", help="delete MODEL's chain")
    fdel.add_argument("model")
    for p in (add, *verbs.choices.values(), fset, *fverbs.choices.values()):
        if "--controlplane" not in p._option_string_actions:
            admin_client.connection_flags(p)


def run(args: argparse.Namespace) -> int:
    return admin_client.run(args, _request, _render)


def _request(args: argparse.Namespace) -> tuple[str, Any]:
    if args.command == "providers":
        if args.verb == "list":
            return "ListProviders", providers_pb2.ListProvidersRequest()
        if args.verb == "remove":
            return "RemoveProvider", providers_pb2.RemoveProviderRequest(name=args.name)
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        if not models:
            models = discover(args)
        provider = providers_pb2.Provider(
            name=args.name,
            type=_ENUM[args.type],
            base_url=args.base_url,
            credential=args.credential,
            models=[providers_pb2.ProviderModel(id=m) for m in models],
            api_version=args.api_version,
            priority=args.priority,
            max_concurrency=args.max_concurrency,
        )
        return "SetProvider", providers_pb2.SetProviderRequest(provider=provider)
    if args.verb == "list":
        return "ListFallbacks", providers_pb2.ListFallbacksRequest()
    if args.verb == "delete":
        return "DeleteFallbacks", providers_pb2.DeleteFallbacksRequest(model=args.model)
    chain = providers_pb2.FallbackChain(
        model=args.model,
        targets=args.targets,
        on=[c.strip() for c in args.on.split(",") if c.strip()],
        queue_wait_seconds=args.queue_wait,
    )
    return "SetFallbacks", providers_pb2.SetFallbacksRequest(chain=chain)


def discover(args: argparse.Namespace) -> list[str]:
    """The provider's model ids, listed with the credential resolved here."""
    if args.type == "azure":
        raise StatusError("azure: give the deployment names with --models", 2)
    base = (args.base_url or _DEFAULT_BASE.get(args.type, "")).rstrip("/")
    if not base:
        raise StatusError(f"a {args.type} provider needs --base-url", 2)
    credentials = Credentials(from_environ(os.environ), args.credentials_dir)
    try:
        secret = credentials.resolve(args.credential).reveal()
    except MissingCredential as exc:
        raise StatusError(f"cannot discover models (or give --models): {exc}", 2) from None
    if args.type == "anthropic":
        url = base + "/v1/models?limit=1000"
        headers = {"x-api-key": secret, "anthropic-version": "2023-06-01"}
    else:
        url = base + "/models"
        headers = {"Authorization": f"Bearer {secret}"}
    context = client_context(args.extra_ca_file)
    try:
        request = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(request, timeout=15, context=context) as resp:
            doc = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise StatusError(f"{url} answered {exc.code} listing models (or give --models)") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise StatusError(f"cannot list models at {url}: {exc} (or give --models)") from None
    ids = [str(m["id"]).removeprefix("models/") for m in doc.get("data", []) if "id" in m]
    if not ids:
        raise StatusError(f"{url} listed no models; give --models", 2)
    return ids


def _render(args: argparse.Namespace, answer: Any) -> str:
    if isinstance(answer, providers_pb2.ListProvidersResponse):
        rows = [
            f"{p.name}\t{_type_name(p.type)}\t{p.base_url}\tcredential={p.credential}\t"
            f"models={','.join(m.id for m in p.models) or '-'}"
            for p in answer.providers
        ]
        return "\n".join(rows) or "(no providers)"
    if isinstance(answer, providers_pb2.ListFallbacksResponse):
        rows = [f"{c.model} -> {' -> '.join(c.targets)}" for c in answer.chains]
        return "\n".join(rows) or "(no fallback chains)"
    doc = json_format.MessageToDict(answer, preserving_proto_field_name=True)
    return json.dumps(doc, indent=2, sort_keys=True) if doc else "ok"


def _type_name(value: int) -> str:
    return next((k for k, v in _ENUM.items() if v == value), str(value))
