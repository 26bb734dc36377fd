#!/usr/bin/env python3
"""Offline validation of Kubernetes manifests, as an API server would see them.

    kubectl kustomize deploy/kubernetes/overlays/production \\
        | python3 deploy/kubernetes/validate.py --complete

Reads a YAML stream (files given as arguments, else stdin) and checks every
object against its schema:

* built-in kinds with kubernetes-validate, in strict mode (an unknown field
  is an error) for the Kubernetes version given by --kubernetes-version;
* KEDA's ScaledObject and TriggerAuthentication with the JSON Schemas in
  schemas/ beside this file (KEDA's CRDs are not built in), plus the rules
  KEDA's admission webhook adds (min <= max replicas, idle < min);
* with --complete (the input is a whole deployment), that references
  resolve inside it: scale targets, KEDA authentication, ConfigMap volumes,
  Service and PodDisruptionBudget selectors.

Prints one JSON object: {"valid", "kubernetes_version", "objects",
"errors"}, plus "documents" (every object as parsed) with --dump.
Exit status: 0 valid, 1 invalid, 2 unusable input or missing modules.
tests/e2e/deploy.rs runs it on both overlays and on broken objects.
"""

import argparse
import json
import os
import sys

try:
    import jsonschema
    import kubernetes_validate
    import yaml
except ImportError as e:  # pragma: no cover - depends on the machine
    print(
        json.dumps(
            {
                "valid": False,
                "errors": [
                    {
                        "object": None,
                        "path": "",
                        "message": f"{e}: pip install kubernetes-validate jsonschema pyyaml",
                    }
                ],
            }
        )
    )
    sys.exit(2)

SCHEMAS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schemas")
DEFAULT_VERSION = "1.30.0"


def object_id(doc):
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind')}/{meta.get('name')}"


def dotted(path):
    return ".".join(str(p) for p in path)


def keda_schema(api_version, kind):
    """The checked-in schema for a keda.sh kind, or None."""
    group, _, version = api_version.partition("/")
    path = os.path.join(SCHEMAS, f"{group}-{version}-{kind.lower()}.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def check_keda(doc, errors):
    schema = keda_schema(doc["apiVersion"], doc["kind"])
    if schema is None:
        errors.append(
            {
                "object": object_id(doc),
                "path": "",
                "message": f"no schema for {doc['apiVersion']} {doc['kind']} in {SCHEMAS}",
            }
        )
        return
    validator = jsonschema.Draft202012Validator(schema)
    found = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    for error in found:
        errors.append(
            {
                "object": object_id(doc),
                "path": dotted(error.absolute_path),
                "message": error.message,
            }
        )
    spec = doc.get("spec")
    if found or not isinstance(spec, dict) or doc["kind"] != "ScaledObject":
        return
    # Rules of KEDA's admission webhook that a schema cannot express.
    low = spec.get("minReplicaCount", 0)
    high = spec.get("maxReplicaCount", 100)
    if low > high:
        errors.append(
            {
                "object": object_id(doc),
                "path": "spec.minReplicaCount",
                "message": f"minReplicaCount {low} is above maxReplicaCount {high}",
            }
        )
    if "idleReplicaCount" in spec and spec["idleReplicaCount"] >= low:
        errors.append(
            {
                "object": object_id(doc),
                "path": "spec.idleReplicaCount",
                "message": "idleReplicaCount must be below minReplicaCount",
            }
        )


def check_builtin(doc, version, errors):
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        errors.append(
            {
                "object": object_id(doc),
                "path": dotted(e.absolute_path),
                "message": e.message,
            }
        )
    except kubernetes_validate.SchemaNotFoundError as e:
        errors.append({"object": object_id(doc), "path": "", "message": e.message})


def pod_spec(doc):
    spec = doc.get("spec") or {}
    if doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return (spec.get("template") or {}).get("spec") or {}
    return None


def pod_labels(doc):
    spec = doc.get("spec") or {}
    return ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_references(docs, errors):
    """References that must resolve inside one complete deployment."""
    names = {(d.get("kind"), (d.get("metadata") or {}).get("name")) for d in docs}
    workloads = [d for d in docs if pod_spec(d) is not None]

    def missing(doc, path, kind, name):
        if (kind, name) not in names:
            errors.append(
                {
                    "object": object_id(doc),
                    "path": path,
                    "message": f"refers to {kind} {name!r}, which is not in the input",
                }
            )

    for doc in docs:
        kind = doc.get("kind")
        spec = doc.get("spec") or {}
        if kind in ("ScaledObject", "HorizontalPodAutoscaler"):
            target = spec.get("scaleTargetRef") or {}
            missing(doc, "spec.scaleTargetRef", target.get("kind", "Deployment"), target.get("name"))
        if kind == "ScaledObject":
            for i, trigger in enumerate(spec.get("triggers") or []):
                ref = trigger.get("authenticationRef")
                if ref:
                    missing(
                        doc,
                        f"spec.triggers.{i}.authenticationRef",
                        ref.get("kind", "TriggerAuthentication"),
                        ref.get("name"),
                    )
        if kind in ("Service", "PodDisruptionBudget"):
            selector = spec.get("selector") or {}
            if kind == "PodDisruptionBudget":
                selector = selector.get("matchLabels") or {}
            if not any(matches(selector, pod_labels(w)) for w in workloads):
                errors.append(
                    {
                        "object": object_id(doc),
                        "path": "spec.selector",
                        "message": "selects no pods of any workload in the input",
                    }
                )
        pod = pod_spec(doc)
        for i, volume in enumerate((pod or {}).get("volumes") or []):
            sources = [volume]
            sources += (volume.get("projected") or {}).get("sources") or []
            for source in sources:
                config_map = source.get("configMap")
                if config_map and not config_map.get("optional"):
                    missing(doc, f"spec.template.spec.volumes.{i}", "ConfigMap", config_map.get("name"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", help="YAML files (default: stdin)")
    parser.add_argument(
        "-k",
        "--kubernetes-version",
        default=DEFAULT_VERSION,
        help=f"Kubernetes version of the built-in schemas (default {DEFAULT_VERSION})",
    )
    parser.add_argument(
        "--complete",
        action="store_true",
        help="the input is a whole deployment: references must resolve inside it",
    )
    parser.add_argument("--dump", action="store_true", help="also print every object as parsed")
    args = parser.parse_args()

    try:
        if args.files:
            docs = []
            for name in args.files:
                with open(name, encoding="utf-8") as f:
                    docs += list(yaml.safe_load_all(f))
        else:
            docs = list(yaml.safe_load_all(sys.stdin))
    except (OSError, yaml.YAMLError) as e:
        print(json.dumps({"valid": False, "errors": [{"object": None, "path": "", "message": str(e)}]}))
        return 2
    docs = [d for d in docs if d is not None]

    errors = []
    for doc in docs:
        if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind"):
            errors.append({"object": None, "path": "", "message": "not an object with apiVersion and kind"})
            continue
        if doc["apiVersion"].startswith("keda.sh/"):
            check_keda(doc, errors)
        else:
            check_builtin(doc, args.kubernetes_version, errors)
    if args.complete and not errors:
        check_references(docs, errors)
    if not docs:
        errors.append({"object": None, "path": "", "message": "the input holds no objects"})

    report = {
        "valid": not errors,
        "kubernetes_version": args.kubernetes_version,
        "objects": [
            {
                "apiVersion": d.get("apiVersion"),
                "kind": d.get("kind"),
                "name": (d.get("metadata") or {}).get("name"),
                "namespace": (d.get("metadata") or {}).get("namespace"),
            }
            for d in docs
            if isinstance(d, dict)
        ],
        "errors": errors,
    }
    if args.dump:
        report["documents"] = docs
    print(json.dumps(report, indent=2, default=str))
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
