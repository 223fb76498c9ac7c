"""deploy/Dockerfile agrees with ./freekv, Debian and the Kubernetes manifests.

usage: check_dockerfile.py DOCKERFILE FREEKV_SCRIPT DEPLOY_DIR
- the build stage installs every build package of ./freekv (its APT_PACKAGES less
  the test-only tools), so the image builds as the repository does;
- the runtime stage installs, for each -dev library the binaries link, the exact
  runtime package that -dev package depends on here (dpkg), and nothing unexplained;
- the image holds every binary the manifests run, gives kvservice cap_ipc_lock, and
  runs as the DaemonSet's user.
Exits 1 naming every disagreement.
"""
import re
import shlex
import subprocess
import sys

import yaml

TEST_ONLY = {"prometheus", "yamllint"}
LINKED_DEV = ["libgrpc++-dev", "libprotobuf-dev", "libabsl-dev", "libucx-dev",
              "prometheus-cpp-dev", "libxxhash-dev"]
RUNTIME_TOOLS = {"libcap2-bin"}  # setcap


def stages(path):
    """Logical lines (continuations joined) of each FROM stage."""
    with open(path) as f:
        text = re.sub(r"\\\n", " ", f.read())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("FROM "):
            result.append([])
        if result and line and not line.startswith("#"):
            result[-1].append(line)
    return result


def apt_installs(stage):
    packages = set()
    for line in stage:
        for command in line.split("&&"):
            words = shlex.split(command.replace("RUN ", "", 1))
            if words[:2] == ["apt-get", "install"]:
                packages |= {w for w in words[2:] if not w.startswith("-")}
    return packages


def freekv_packages(path):
    with open(path) as f:
        m = re.search(r"APT_PACKAGES=\((.*?)\)", f.read(), re.S)
    return set(m.group(1).split())


def exact_dependencies(package):
    out = subprocess.run(["dpkg-query", "-W", "-f=${Depends}", package],
                         capture_output=True, text=True, check=True).stdout
    return {d.split()[0] for d in out.split(",") if "(=" in d}


def manifest_binaries(deploy):
    binaries = set()
    for name in ("20-daemonset.yaml", "examples/worker-pod.yaml"):
        with open(f"{deploy}/kubernetes/{name}") as f:
            text = f.read()
        binaries |= set(re.findall(r"/usr/local/bin/[A-Za-z0-9_]+", text))
    with open(f"{deploy}/kubernetes/20-daemonset.yaml") as f:
        uid = yaml.safe_load(f)["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    return binaries, uid


def main():
    dockerfile, freekv, deploy = sys.argv[1:4]
    problems = []
    build, runtime = stages(dockerfile)[0], stages(dockerfile)[-1]

    missing = sorted(freekv_packages(freekv) - TEST_ONLY - apt_installs(build))
    if missing:
        problems.append(f"the build stage lacks ./freekv's packages {missing}")

    wanted = set()
    for dev in LINKED_DEV:
        if dev not in apt_installs(build):
            problems.append(f"the build stage does not install {dev}")
        choices = exact_dependencies(dev)
        if not choices & apt_installs(runtime):
            problems.append(f"the runtime stage has none of {sorted(choices)} ({dev})")
        wanted |= choices
    extra = sorted(apt_installs(runtime) - wanted - RUNTIME_TOOLS)
    if extra:
        problems.append(f"the runtime stage installs unexplained packages {extra}")

    runtime_text = "\n".join(runtime)
    binaries, uid = manifest_binaries(deploy)
    for binary in sorted(binaries):
        name = binary.rsplit("/", 1)[1]
        if not re.search(rf"bazel-bin/\S+/{name}\b", "\n".join(build)):
            problems.append(f"the manifests run {binary}, which the image does not build")
    if "setcap cap_ipc_lock=+ep /usr/local/bin/kvservice" not in runtime_text:
        problems.append("kvservice gets no cap_ipc_lock file capability")
    if f"USER {uid}:" not in runtime_text:
        problems.append(f"the image does not run as the DaemonSet's uid {uid}")

    for problem in problems:
        print(f"PROBLEM: {problem}")
    print(f"Dockerfile: {len(problems)} problems; runtime packages "
          f"{sorted(apt_installs(runtime))}; binaries {sorted(binaries)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
