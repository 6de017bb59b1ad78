"""What bench/table.py and bench/cluster_table.py share: ssebench's JSON
lines, by label and by workload, and how figures are printed."""
import json


def load(path):
    """The results in path, by label, and the workloads in their order
    (a label is "<server> <workload>")."""
    rows = [json.loads(line) for line in open(path) if line.strip()]
    workloads = []
    for r in rows:
        workload = r["label"].split(" ", 1)[1]
        if workload not in workloads:
            workloads.append(workload)
    return {r["label"]: r for r in rows}, workloads


def fmt(v, digits=2):
    return "n/a" if v is None else f"{v:.{digits}f}"
