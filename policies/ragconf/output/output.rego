# METADATA
# title: Answer output rules
# description: |
#   What an answer must look like: citations required, at most max_passages passages given to the
#   generator, and PII redaction of the answer (and the logs) when any passage is confidential or restricted.
# custom:
#   owner: governance
package ragconf.output

sensitive := {"confidential", "restricted"}

has_sensitive if {
	some d in input.documents
	d.classification in sensitive
}

default redact_pii := false

redact_pii if has_sensitive

# METADATA
# title: Output decision
decision := {"require_citations": true, "max_passages": 5, "redact_pii": redact_pii} if input.principal.id
