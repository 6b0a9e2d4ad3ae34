# METADATA
# title: Output policy tests (table-driven, see access_test.rego)
package ragconf.output_test

alice := {"id": "alice", "groups": ["sre"], "tenant": "acme", "clearance": "confidential"}

cases := [
	{"name": "public answers need citations and no redaction", "rule": "decision",
	 "input": {"principal": alice, "documents": [{"classification": "public"}]},
	 "expect": {"require_citations": true, "max_passages": 5, "redact_pii": false}},
	{"name": "confidential passages turn on PII redaction", "rule": "decision",
	 "input": {"principal": alice, "documents": [{"classification": "confidential"}]},
	 "expect": {"require_citations": true, "max_passages": 5, "redact_pii": true}},
	{"name": "no principal, no decision", "rule": "decision", "input": {"documents": []}, "expect": false},
]

case_ok(c) if {
	c.expect == false
	not data.ragconf.output[c.rule]
}

case_ok(c) if {
	c.expect != false
	data.ragconf.output[c.rule] == c.expect
}

test_cases if {
	every c in cases {
		case_ok(c) with input as c.input
	}
}
