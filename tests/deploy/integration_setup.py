"""Set-up steps of tests/deploy/prometheus_integration_test.sh.

  integration_setup.py free-port
      a TCP port on 127.0.0.1 that was free a moment ago
  integration_setup.py flagfile CONFIGMAP_YAML OUT
      the kvservice flagfile that the ConfigMap mounts, written to OUT
  integration_setup.py flag FLAGFILE NAME
      one flag's value in a flagfile
  integration_setup.py prometheus-config PROJECT_CONFIG RULES TARGET OUT
      the project's Prometheus configuration, adapted to a loopback test: the freekv
      job's DNS discovery and relabelling replaced by the static TARGET, every interval
      1 s, the rule file at its absolute path
  integration_setup.py exposition METRICS_TEXT EXPECTED_NAMES
      the freekv_* series names in a /metrics body equal the expected names
"""
import json
import socket
import sys

import yaml


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])


def flagfile(configmap, out):
    with open(configmap) as f:
        text = yaml.safe_load(f)["data"]["kvservice.flags"]
    with open(out, "w") as f:
        f.write(text)


def flag(path, name):
    with open(path) as f:
        for line in f:
            key, _, value = line.strip().partition("=")
            if key == f"--{name}":
                print(value)
                return
    sys.exit(f"no --{name} in {path}")


def prometheus_config(project, rules, target, out):
    with open(project) as f:
        config = yaml.safe_load(f)
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [rules]
    jobs = [j for j in config["scrape_configs"] if j["job_name"] == "freekv"]
    if len(jobs) != 1:
        sys.exit(f"{project}: expected one job named freekv, found {len(jobs)}")
    job = jobs[0]
    for discovery in [k for k in job if k.endswith("_sd_configs")] + ["relabel_configs"]:
        job.pop(discovery, None)
    job.update(static_configs=[{"targets": [target]}], scrape_interval="1s",
               scrape_timeout="1s")
    config.pop("alerting", None)
    with open(out, "w") as f:
        json.dump(config, f, indent=2)  # JSON is YAML, and Prometheus reads YAML


def exposition(metrics_text, expected_names):
    with open(metrics_text) as f:
        exposed = {line.split("{")[0].split()[0] for line in f
                   if line.startswith("freekv_")}
    with open(expected_names) as f:
        expected = {line.strip() for line in f if line.strip() and not line.startswith("#")}
    missing, extra = sorted(expected - exposed), sorted(exposed - expected)
    print(f"exposition: {len(exposed)} freekv_* series names; missing {missing}; "
          f"not in {expected_names}: {extra}")
    if missing or extra:
        sys.exit(1)


COMMANDS = {"free-port": free_port, "flagfile": flagfile, "flag": flag,
            "prometheus-config": prometheus_config, "exposition": exposition}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
