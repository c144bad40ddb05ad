"""Where the nodes ran: one profiled inference, outside the timed loop, read back per node.

`session.get_providers()` lists a provider even when most nodes fell back to the CPU. The
runtime's own profiler names the provider of every node it executed ("cat": "Node" events whose
"args" carry "provider" and "op_name"; the node's name is the event's name less
"_kernel_time"), in every release from 1.5 to 1.32, so the harness makes a second session with
`SessionOptions.enable_profiling = True` (same providers, options and session options), runs one
inference, ends profiling, counts the events and deletes the trace.

What is counted is the graph as executed: after graph optimisation (fused nodes such as
FusedGemm count once), and with compiling providers' fused partitions as the nodes they are: the
OpenVINO EP runs its part of the graph as one or more "OpenVINO-EP-subgraph_N" nodes, each of
which counts as one node, however many model nodes it stands for (TensorRT: its
"TRTKernel_graph_..." nodes likewise). The copies onnxruntime inserts between devices
(MemcpyToHost / MemcpyFromHost) are counted apart: they are no compute nodes.

Trace formats seen (tests/harness/data/traces): 1.5-1.16 write "_fence_before"/"_fence_after"
events around each "_kernel_time" event (only the latter has "provider"); 1.5 numbers nodes with
"graph_index", later releases with "node_index"; 1.32 and onnxruntime-openvino 1.24 write the
kernel events alone. 1.5 has no `profile_file_prefix`: the trace goes to the working directory,
so the profiled session runs with a temporary directory as its working directory.
"""

import json
import os
import shutil
import tempfile

KERNEL_SUFFIX = "_kernel_time"
COPY_OPS = frozenset(("MemcpyToHost", "MemcpyFromHost"))
FALLBACK_LIST_LIMIT = 50
PROFILED = "profiled"


def _node_events(events):
    """(name, op_type, provider) once per executed node, in trace order."""
    seen = set()
    nodes = []
    for event in events:
        if not isinstance(event, dict) or event.get("cat") != "Node":
            continue
        name = str(event.get("name", ""))
        args = event.get("args") or {}
        provider = args.get("provider")
        if not provider or not name.endswith(KERNEL_SUFFIX):
            continue
        node = name[:-len(KERNEL_SUFFIX)]
        index = args.get("node_index", args.get("graph_index"))
        # a node inside a Loop/If body can run several times: count it once
        key = (node, args.get("op_name"), provider, index)
        if key in seen and (node or index is not None):
            continue
        seen.add(key)
        nodes.append((node, args.get("op_name"), provider))
    return nodes


def summarize_trace(events, requested, limit=FALLBACK_LIST_LIMIT):
    """The placement fields of the provider block from a parsed profiling trace.

    nodes: {provider: compute nodes it ran}; copy_nodes: inserted device copies;
    node_share: the requested provider's share of the compute nodes (null without any);
    fallback_nodes: the compute nodes not on the requested provider (at most `limit`, in the
    order they ran), fallback_node_count: how many there were in all.
    """
    nodes = {}
    copies = 0
    fallen = []
    for name, op_type, provider in _node_events(events):
        if op_type in COPY_OPS:
            copies += 1
            continue
        nodes[provider] = nodes.get(provider, 0) + 1
        if provider != requested:
            fallen.append({"name": name, "op_type": op_type, "provider": provider})
    total = sum(nodes.values())
    return {"node_placement": PROFILED if total else "unavailable: the trace names no node",
            "nodes": dict(sorted(nodes.items())), "copy_nodes": copies,
            "node_share": (nodes.get(requested, 0) / float(total)) if total else None,
            "fallback_nodes": fallen[:limit], "fallback_node_count": len(fallen)}


def unavailable(reason):
    """The placement fields when no trace could be had; node_placement says why."""
    return {"node_placement": "unavailable: " + reason, "nodes": None, "copy_nodes": None,
            "node_share": None, "fallback_nodes": None, "fallback_node_count": None}


def not_applicable():
    """torch cells (and results that never got this far): every field null."""
    return {"node_placement": None, "nodes": None, "copy_nodes": None, "node_share": None,
            "fallback_nodes": None, "fallback_node_count": None}


def read_trace(path):
    with open(path) as handle:
        events = json.load(handle)
    if isinstance(events, dict):  # Chrome trace object form, should a release write it
        events = events.get("traceEvents") or []
    return events


def profile_once(make_session, sess_options, feeds):
    """Events of one profiled inference; the trace file is deleted.

    make_session(sess_options) -> a session (absolute model path: the working directory
    changes for the duration); the caller turns any exception into unavailable(reason).
    """
    folder = tempfile.mkdtemp(prefix="harness-profile-")
    previous = os.getcwd()
    sess_options.enable_profiling = True
    if hasattr(sess_options, "profile_file_prefix"):  # 1.6+; 1.5 writes to the cwd
        sess_options.profile_file_prefix = os.path.join(folder, "placement")
    try:
        os.chdir(folder)
        session = make_session(sess_options)
        session.run(None, dict(feeds))
        trace = session.end_profiling()
        if not trace:
            raise RuntimeError("end_profiling() returned no file name")
        return read_trace(os.path.join(folder, trace))
    finally:
        os.chdir(previous)
        shutil.rmtree(folder, ignore_errors=True)
