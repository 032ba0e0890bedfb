"""The generated wallaby.v1 modules match proto/ (regenerate with `make proto`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_current(tmp_path):
    protos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "proto/wallaby/v1").glob("*.proto"))
    out = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", "proto", f"--python_out={tmp_path}",
                          f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", *protos], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    generated = sorted(p.name for p in (tmp_path / "wallaby/v1").iterdir())
    committed = sorted(p.name for p in (ROOT / "wallaby/v1").iterdir() if p.name != "__init__.py"
                       and p.suffix in (".py", ".pyi"))
    assert generated == committed
    stale = [n for n in generated
             if (tmp_path / "wallaby/v1" / n).read_bytes() != (ROOT / "wallaby/v1" / n).read_bytes()]
    assert not stale, f"run `make proto`: {stale} differ from proto/"


def test_service_and_method_names_match_the_upstream_api():
    from wallaby.v1 import checkpoint_pb2, ddl_pb2, flow_pb2, ingest_pb2, stream_pb2

    modules = (flow_pb2, checkpoint_pb2, ddl_pb2, stream_pb2, ingest_pb2)
    methods = {s.full_name: [m.name for m in s.methods]
               for mod in modules for s in mod.DESCRIPTOR.services_by_name.values()}
    assert {"CreateFlow", "UpdateFlow", "ReconfigureFlow", "GetFlow", "ListFlows", "DeleteFlow", "StartFlow",
            "PauseFlow", "ResumeFlow", "StopFlow", "RunFlowOnce", "CleanupFlow", "ListReplicationSlots",
            "GetReplicationSlot",
            "DropReplicationSlot", "ListPublicationTables", "AddPublicationTables", "DropPublicationTables",
            "SyncPublicationTables", "ResolveStaging", "GetBackfillStatus"} <= set(methods["wallaby.v1.FlowService"])
    assert {"ListPendingDDL", "ListDDL", "ApproveDDL", "RejectDDL"} <= set(methods["wallaby.v1.DDLService"])
    assert methods["wallaby.v1.StreamService"] == ["Pull", "Ack", "Replay"]
    assert methods["wallaby.v1.IngestService"] == ["IngestBatch"]
    assert "GetCheckpoint" in methods["wallaby.v1.CheckpointService"]
