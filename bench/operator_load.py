"""The operator's CPU and memory with N Releases (default 100) in the stand-in cluster.

    .venv/bin/python bench/operator_load.py [--releases 100] [--steady 30] [--out bench/results/operator-load.md]

The parent process runs the stand-in API server (tests/kubernetes/emulator.py, real HTTP on
loopback) and the cluster simulator (pods become ready), installs the Release CRD, and creates N
Releases (services svc-000..., one replica each, their first version). A child process runs the
operator (`Operator`, the same loops as `safeship operator run`, one instance, a SQLite store in a
temp folder) with a synthetic traffic source (every version serves 1000 requests per read, no
errors: the Prometheus it would read is not part of this measure). The parent waits until every
Release reports `succeeded`, then lets the operator idle `--steady` seconds with all Releases
watched, then stops it. The child reports its own CPU time (user + system) and resident memory
(now and peak) at three points: started (loops running, nothing listed), all succeeded, and after
the steady period; the parent counts the API requests the operator made by verb.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# The cluster simulator's pace: it runs in the parent beside the stand-in API server, and at 20
# ticks a second over 100 services' objects it alone kept the stand-in too busy to answer the
# operator's Lease renewals in time (the first run: bench/results/operator-load.md, "first run").
SIM_INTERVAL_S = 0.5
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests" / "kubernetes")]


def _memory() -> dict[str, float]:
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) / 1024.0
    return found


def _sample(label: str) -> dict[str, Any]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"at": label, "cpu_s": round(usage.ru_utime + usage.ru_stime, 2), **{
        k: round(v, 1) for k, v in _memory().items()}}


class SteadyTraffic:
    """Every version serves 1000 requests per read, no errors, 20 ms each."""

    def __init__(self) -> None:
        from safeship.traffic import TrafficCounters

        self.totals: dict[str, TrafficCounters] = {}

    async def counters(self, route: Any) -> Mapping[str, Any]:
        from safeship.traffic import TrafficCounters

        for version in ("v1",):
            total = self.totals.setdefault(version, TrafficCounters())
            for _ in range(1000):
                total.observe(20.0, status=200)
        return {v: c.plus(TrafficCounters()) for v, c in self.totals.items()}

    async def before(self, route: Any, at: float, span: float) -> None:
        return None

    async def close(self) -> None:
        return None


async def child(kubeconfig: str, context: str, namespace: str, folder: str, report: str) -> None:
    from safeship.config.models import SafeshipConfig
    from safeship.kube.client import KubeClient
    from safeship.operator.lease import LeaseSettings
    from safeship.operator.runner import Operator, OperatorSettings
    from safeship.store import Store

    config = SafeshipConfig.model_validate({
        "intelligent_deployment": {"rollback": {"monitoring": {"duration": "2s", "interval": "1s"}}},
        "environment_management": {"environments": [{
            "name": "production", "type": "production", "platform": "kubernetes", "cluster": context,
            "kubeconfig": kubeconfig, "namespace": namespace, "traffic_router": "istio"}]},
        "store": {"url": f"sqlite:///{folder}/state.db"},
    })
    samples = [_sample("started")]
    settings = OperatorSettings(config=config, environment="production",
                                lease=LeaseSettings(namespace="kube-system", identity="bench", duration_s=15,
                                                    renew_deadline_s=10, retry_s=2),
                                namespace=namespace, state_dir=Path(folder), max_wait_s=1.0)
    store = Store(config.store.url)
    kube = KubeClient.from_kubeconfig(kubeconfig, context=context, namespace=namespace)
    operator = Operator(settings, store, kube, traffic_for=lambda _c, _e, _r: SteadyTraffic(),  # type: ignore
                        router_options={"wait_s": 60.0, "poll_s": 0.2})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, lambda: samples.append(_sample("all succeeded")))
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await operator.run(stop)
    samples.append(_sample("after steady period"))
    records = store.list_deployments(limit=100_000)
    spans = sorted(r.finished_at - r.created_at for r in records if r.finished_at is not None)
    Path(report).write_text(json.dumps({"samples": samples, "stats": operator.stats,
                                        "lease_taken": operator.elector.transitions_seen,
                                        "deployments": dict(Counter(r.phase for r in records)),
                                        "rollout_s": [round(spans[0], 1), round(spans[len(spans) // 2], 1),
                                                      round(spans[-1], 1)] if spans else []}))
    await kube.close()
    store.close()


async def parent(releases: int, steady: float, out: Path | None, give_up: float) -> None:
    from clustersim import ClusterSim
    from emulator import running_emulator

    from safeship.operator import release as rel
    from safeship.operator.crd import release_crd

    with tempfile.TemporaryDirectory() as folder:
        async with running_emulator(Path(folder), namespace="bench") as api:
            api.write(release_crd())
            if ("coordination.k8s.io", "v1", "leases") not in api.emulator.kinds:
                api.emulator.add_kind("coordination.k8s.io/v1", "Lease", "leases")
            for i in range(releases):
                api.write({"apiVersion": rel.API_VERSION, "kind": rel.KIND,
                           "metadata": {"name": f"svc-{i:03d}", "namespace": "bench"},
                           "spec": {"service": f"svc-{i:03d}", "image": "registry.example/app:{version}",
                                    "version": "v1", "replicas": 1, "strategy": "canary"}})
            sim = ClusterSim(api.emulator)
            sim_cpu = [0.0]  # CPU time the simulator's ticks took (in this process, beside the stand-in)
            plain_tick = sim._tick

            def timed_tick() -> None:
                began = time.process_time()
                try:
                    plain_tick()
                finally:
                    sim_cpu[0] += time.process_time() - began

            sim._tick = timed_tick  # type: ignore[method-assign]
            parent_samples = [{**_sample("started"), "sim_cpu_s": 0.0}]
            load = [os.getloadavg()]
            report = Path(folder) / "report.json"
            before = len(api.emulator.requests_made)
            started = time.monotonic()
            process = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--child", str(api.kubeconfig), api.context, "bench", folder, str(report))
            done_s = None
            succeeded = 0
            async with sim.running(interval=SIM_INTERVAL_S, max_ticks=1_000_000):
                deadline = started + give_up
                while time.monotonic() < deadline:
                    phases = Counter(str((o.get("status") or {}).get("phase", "")) for o in
                                     api.items(rel.API_VERSION, rel.KIND, "bench"))
                    succeeded = phases.get("succeeded", 0)
                    if succeeded == releases:
                        done_s = time.monotonic() - started
                        break
                    if process.returncode is not None:
                        break
                    await asyncio.sleep(0.5)
                process.send_signal(signal.SIGUSR1)
                parent_samples.append({**_sample("all succeeded"), "sim_cpu_s": round(sim_cpu[0], 2)})
                load.append(os.getloadavg())
                steady_from = len(api.emulator.requests_made)
                await asyncio.sleep(steady)
                steady_requests = len(api.emulator.requests_made) - steady_from
                parent_samples.append({**_sample("after steady period"), "sim_cpu_s": round(sim_cpu[0], 2)})
                load.append(os.getloadavg())
                process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(process.wait(), timeout=60)
            requests = api.emulator.requests_made[before:]
            final = [o.get("status") or {} for o in api.items(rel.API_VERSION, rel.KIND, "bench")]
            phases = Counter(str(s.get("phase", "")) for s in final)
            messages = Counter(str(s.get("message", ""))[:160] for s in final if s.get("phase") != "succeeded")
            verbs = Counter(f"{r.method.value} {'watch' if r.params.get('watch') else ''}".strip() for r in requests)
            data = json.loads(report.read_text())
    result = {"releases": releases, "succeeded": succeeded, "phases": dict(phases),
              "messages": dict(messages.most_common(5)),
              "all_succeeded_s": None if done_s is None else round(done_s, 1),
              "steady_s": steady, "steady_requests": steady_requests, "requests": dict(verbs),
              "stand_in": parent_samples, "load_average": [[round(x, 2) for x in one] for one in load], **data}
    print(json.dumps(result, indent=1))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        lines = [
            "# Operator load: Releases in the stand-in cluster",
            "",
            f"`.venv/bin/python bench/operator_load.py --releases {releases} --steady {steady:g}` on this "
            f"machine ({os.cpu_count()} CPUs, shared), {time.strftime('%Y-%m-%d')}.",
            "",
            f"{releases} Releases, each a first deployment (canary strategy, 1 replica, its monitoring window of "
            f"2 s judged on a synthetic traffic source); one operator process.",
            "",
            (f"- Releases `succeeded`: {succeeded} of {releases}, all of them after **{result['all_succeeded_s']} s**"
             if done_s is not None else
             f"- Releases `succeeded`: {succeeded} of {releases} when the bench gave up ({give_up:g} s)"),
            f"- phases at the end: {dict(phases)}; most common messages of the others: "
            f"{dict(messages.most_common(3))}",
            f"- API requests by the operator: {dict(verbs)} (in {steady:g} s idle afterwards: {steady_requests})",
            f"- reconciles: {data['stats'].get('reconciles')}, of which ticked an engine: "
            f"{data['stats'].get('ticks')}, status writes: "
            f"{data['stats'].get('status_writes')} (refused while not the Lease holder: "
            f"{data['stats'].get('status_refused')}), lists: {data['stats'].get('lists')}, "
            f"Lease taken: {data.get('lease_taken')} time(s)",
            f"- deployments in the store: {data.get('deployments')}; each one's time from submitted to finished "
            f"(min, median, max, s): {data.get('rollout_s')}",
            f"- load average (1, 5, 15 min) at the start, when all succeeded, after the steady period: "
            f"{result['load_average']}",
            "",
            "| point | CPU time (user+system, s) | RSS (MiB) | peak RSS (MiB) |",
            "|---|---|---|---|",
        ]
        for sample in data["samples"]:
            lines.append(f"| {sample['at']} | {sample['cpu_s']} | {sample.get('VmRSS')} | {sample.get('VmHWM')} |")
        lines += ["", "The stand-in (API server and cluster simulator, one process; the simulator's share apart):", "",
                  "| point | CPU time (user+system, s) | of which simulator ticks (s) | RSS (MiB) | peak RSS (MiB) |",
                  "|---|---|---|---|---|"]
        for sample in parent_samples:
            lines.append(f"| {sample['at']} | {sample['cpu_s']} | {sample['sim_cpu_s']} | {sample.get('VmRSS')} | "
                         f"{sample.get('VmHWM')} |")
        out.write_text("\n".join(lines) + "\n")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        asyncio.run(child(*sys.argv[2:7]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--releases", type=int, default=100)
    parser.add_argument("--steady", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--give-up", type=float, default=900.0, help="seconds to wait for every Release")
    args = parser.parse_args()
    asyncio.run(parent(args.releases, args.steady, args.out, args.give_up))


if __name__ == "__main__":
    main()
