"""The Kubernetes manifests agree with the kvservice's flags and with each other.

usage: check_manifests.py DEPLOY_DIR
Each check is a reason written in deploy/kubernetes/20-daemonset.yaml, held to the
values: memory sized from --capacity, the grace period from --shutdown_grace_ms, the
probes and the workers on the flag's socket, the metrics port through Service and
scrape configuration, the IPC and PID namespaces and the socket's group shared with
the worker, GPU visibility without a GPU request, IPC_LOCK for pinned memory.
Exits 1 naming every disagreement.
"""
import os
import re
import sys

import yaml

BINARY = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
QUANTITY = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
            "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "": 1}
HEADROOM = 2 << 30   # bytes above --capacity: gRPC, UCX, exposer, last chunk
GRACE_MARGIN_S = 5   # seconds above --shutdown_grace_ms: closing sessions, exit


def byte_size_flag(text):
    """The kvservice's --capacity syntax: digits and an optional binary K/M/G/T."""
    m = re.fullmatch(r"(\d+)([KMGT]?)", text)
    if not m:
        raise ValueError(f"not a byte size: {text!r}")
    return int(m.group(1)) * BINARY.get(m.group(2), 1)


def quantity(text):
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T|)", str(text))
    if not m:
        raise ValueError(f"not a memory quantity: {text!r}")
    return int(m.group(1)) * QUANTITY[m.group(2)]


def load(deploy, name):
    with open(os.path.join(deploy, "kubernetes", name)) as f:
        return yaml.safe_load(f)


def flags_of(configmap):
    flags = {}
    for line in configmap["data"]["kvservice.flags"].splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            flags[name.lstrip("-")] = value
    return flags


def probe_commands(container):
    return {kind: container[kind]["exec"]["command"]
            for kind in ("startupProbe", "readinessProbe", "livenessProbe")}


def check_daemonset(ds, cm, flags, problems):
    pod = ds["spec"]["template"]["spec"]
    kv = next(c for c in pod["containers"] if c["name"] == "kvservice")
    res = kv["resources"]
    capacity = byte_size_flag(flags["capacity"])
    if res["requests"] != res["limits"]:
        problems.append("requests differ from limits: not Guaranteed QoS")
    if quantity(res["limits"]["memory"]) < capacity + HEADROOM:
        problems.append(f"memory limit {res['limits']['memory']} is below --capacity="
                        f"{flags['capacity']} plus {HEADROOM >> 30}Gi")
    if any("nvidia.com/gpu" in r for r in res.values()):
        problems.append("the kvservice requests a GPU; it must only see them")
    env = {e["name"]: e.get("value") for e in kv.get("env", [])}
    if env.get("NVIDIA_VISIBLE_DEVICES") != "all":
        problems.append("NVIDIA_VISIBLE_DEVICES is not 'all'")
    if "IPC_LOCK" not in kv["securityContext"]["capabilities"].get("add", []):
        problems.append("the kvservice lacks IPC_LOCK for pinned memory")
    grace_ms = int(flags["shutdown_grace_ms"])
    if pod["terminationGracePeriodSeconds"] * 1000 < grace_ms + GRACE_MARGIN_S * 1000:
        problems.append(f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']}"
                        f" is under --shutdown_grace_ms={grace_ms} plus {GRACE_MARGIN_S} s")
    if not (pod.get("hostIPC") and pod.get("hostPID")):
        problems.append("the DaemonSet does not share the host IPC and PID namespaces")
    if ds["spec"]["updateStrategy"]["rollingUpdate"].get("maxSurge") not in (0, "0"):
        problems.append("maxSurge must be 0: two kvservices would share one socket")

    # The flagfile is the ConfigMap's key, mounted where --flagfile points.
    mounts = {m["name"]: m["mountPath"] for m in kv["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    flag_volume = next(n for n, v in volumes.items() if "configMap" in v)
    if volumes[flag_volume]["configMap"]["name"] != cm["metadata"]["name"]:
        problems.append("the flags volume is not the ConfigMap")
    flagfile = f"{mounts[flag_volume]}/kvservice.flags"
    if f"--flagfile={flagfile}" not in kv["args"]:
        problems.append(f"kvservice args {kv['args']} do not read {flagfile}")

    # The socket lies in the shared host directory, where every probe asks.
    socket = flags["socket"]
    socket_dir = os.path.dirname(socket)
    shared = [n for n, p in mounts.items() if p == socket_dir]
    if not shared or "hostPath" not in volumes[shared[0]]:
        problems.append(f"--socket={socket} is not in a hostPath mount")
    for kind, command in probe_commands(kv).items():
        if f"--socket={socket}" not in command:
            problems.append(f"{kind} does not ask {socket}: {command}")
    if "--allow_not_serving" not in probe_commands(kv)["livenessProbe"]:
        problems.append("liveness would restart a draining kvservice")
    if any("--allow_not_serving" in probe_commands(kv)[k]
           for k in ("startupProbe", "readinessProbe")):
        problems.append("readiness must not accept NOT_SERVING")

    port = int(flags["metrics_address"].rsplit(":", 1)[1])
    metrics_ports = [p["containerPort"] for p in kv["ports"] if p["name"] == "metrics"]
    if metrics_ports != [port]:
        problems.append(f"containerPort 'metrics' {metrics_ports} != --metrics_address "
                        f"port {port}")
    return {"socket_dir": socket_dir, "host_dir": volumes[shared[0]]["hostPath"]["path"]
            if shared else None, "group": pod["securityContext"]["runAsGroup"],
            "port": port, "uid": pod["securityContext"]["runAsUser"]}


def check_worker(worker, facts, problems):
    pod = worker["spec"]
    if not (pod.get("hostIPC") and pod.get("hostPID")):
        problems.append("the worker does not share the host IPC and PID namespaces")
    if facts["group"] not in pod["securityContext"].get("supplementalGroups", []):
        problems.append(f"the worker is not in the socket's group {facts['group']}")
    if pod["securityContext"].get("runAsUser") == facts["uid"]:
        problems.append("the worker runs as the kvservice's uid")
    host_dirs = [v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v]
    if facts["host_dir"] not in host_dirs:
        problems.append(f"the worker does not mount {facts['host_dir']}")


def check_service_and_scrape(service, deploy, facts, problems):
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    if ports.get("metrics", {}).get("port") != facts["port"]:
        problems.append(f"Service port 'metrics' is not {facts['port']}")
    with open(os.path.join(deploy, "prometheus", "prometheus.yml")) as f:
        scrape = yaml.safe_load(f)
    job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "freekv")
    dns = job["dns_sd_configs"][0]
    name = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc."
    if not all(n.startswith(name) for n in dns["names"]) or dns["port"] != facts["port"]:
        problems.append(f"the scrape job asks {dns}, not {name}*:{facts['port']}")


def main():
    deploy = sys.argv[1]
    problems = []
    cm = load(deploy, "10-configmap.yaml")
    flags = flags_of(cm)
    facts = check_daemonset(load(deploy, "20-daemonset.yaml"), cm, flags, problems)
    check_worker(load(deploy, "examples/worker-pod.yaml"), facts, problems)
    check_service_and_scrape(load(deploy, "30-service.yaml"), deploy, facts, problems)
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print(f"manifests: {len(problems)} problems (capacity {flags['capacity']}, "
          f"grace {flags['shutdown_grace_ms']} ms, socket {flags['socket']})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
