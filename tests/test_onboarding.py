"""What a team onboarding its corpus does, through the real CLI: `init` a config folder, drop in files of every
format with access metadata (front matter for .md/.txt, <meta> for HTML, a sidecar for the PDF), `validate`,
`ingest`, `ask` as two users, `export`, and load the export in plain Haystack against the same store."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli
from tests.ingest.oracle import minimal_pdf


def _drop_in_documents(docs: Path) -> None:
    (docs / "support").mkdir(parents=True)
    (docs / "support" / "refunds.md").write_text(
        "---\ntitle: Refund policy\nclassification: public\n---\n# Refund policy\n\n"
        "## How long do customers have to ask for a refund?\nCustomers can ask for a refund within 45 days.\n"
    )
    (docs / "support" / "escalation.txt").write_text(
        "---\nclassification: confidential\nacl_groups: [team]\n---\nEscalation matrix\n\n"
        "Severity one tickets page the duty manager Priya Raman on the red phone line.\n"
    )
    (docs / "support" / "status.html").write_text(
        '<html><head><title>Status page</title><meta name="classification" content="internal"></head>'
        "<body><h1>Status page</h1><p>The status page lives at status.example.com and updates every minute.</p>"
        "</body></html>"
    )
    (docs / "support" / "pricing.pdf").write_bytes(
        minimal_pdf("Enterprise pricing: the discount ceiling is 18 percent without VP approval.")
    )
    (docs / "support" / "pricing.pdf.meta.yaml").write_text("classification: confidential\nacl_groups: [team]\n")


def test_a_team_onboards_its_corpus_in_yaml_alone(tmp_path: Path) -> None:
    from haystack import Pipeline

    work = tmp_path / "work"
    work.mkdir()
    run_cli("init", "kb", "--tenant", "initech", cwd=work, check=True)
    team = work / "kb"
    _drop_in_documents(team / "docs")

    out = run_cli("validate", "--json", "-c", "kb", cwd=work, check=True).stdout
    assert json.loads(out)["valid"]

    ingest = json.loads(run_cli("ingest", "--json", "--strict", "-c", "kb", cwd=work, check=True).stdout)
    assert ingest["added"] == 6 and not ingest.get("errors") and not ingest.get("quarantined"), ingest

    def ask(question: str, user: str) -> dict:
        proc = run_cli("ask", question, "--user", user, "--json", "-c", "kb", cwd=work, check=True)
        return json.loads(proc.stdout)

    lead = ask("What is the discount ceiling for enterprise pricing?", "lead")
    assert "18 percent" in lead["answer"] and lead["citations"][0]["doc_id"] == "support/pricing.pdf"
    guest = ask("What is the discount ceiling for enterprise pricing?", "guest")
    assert "18 percent" not in guest["answer"]
    assert all(d["meta"].get("classification") == "public" for d in guest["documents"])
    assert "45 days" in ask("How long do customers have to ask for a refund?", "guest")["answer"]
    status = ask("Where is the status page?", "lead")
    assert "status.example.com" in status["answer"] and status["citations"][0]["doc_id"] == "support/status.html"

    listed = run_cli("export", "-c", "kb", "-o", "export", cwd=work, check=True).stdout.split()
    assert sorted(Path(p).name for p in listed) == ["generator-answer.yaml", "retrieval.yaml", "stages.json"]
    stages = json.loads((work / "export" / "stages.json").read_text())["stages"]
    retrieval = Pipeline.loads((work / "export" / "retrieval.yaml").read_text(), allowed_modules=["ragconf"])
    generator = Pipeline.loads((work / "export" / "generator-answer.yaml").read_text(), allowed_modules=["ragconf"])
    # plain Haystack, no ragconf runtime: the exported guard enforces the team's policy bundle
    question = "Who does a severity one ticket page?"
    data: dict = {}
    for ref in stages["retrieval.yaml"]["inputs"]["query"]:
        comp, sock = ref.split(".")
        data.setdefault(comp, {})[sock] = question
    for user, clearance, groups in (("lead", "confidential", ["team"]), ("guest", "public", [])):
        principal = {"id": user, "groups": groups, "tenant": "initech", "clearance": clearance, "attributes": {}}
        docs = retrieval.run({**data, "access_guard": {"principal": principal}})["access_guard"]["documents"]
        answer = generator.run({"answer": {"query": question, "documents": docs}})["answer"]["replies"][0]
        if user == "lead":
            assert "Priya Raman" in answer
        else:
            assert "Priya Raman" not in answer and all(d.meta.get("classification") == "public" for d in docs)
