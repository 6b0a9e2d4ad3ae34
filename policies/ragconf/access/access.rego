# METADATA
# title: Document access
# description: |
#   Decides which documents a principal may use. Two decision points share one definition of "visible":
#   `filter` (a Haystack filter pushed down into every retriever) and `allow` / `allowed_ids` (checked on
#   every retrieved document before it can reach a prompt, an answer, a citation or a log).
#   A document is visible when
#     - its tenant is missing, or equals the principal's tenant;
#     - the principal's clearance is at least its classification (public < internal < confidential <
#       restricted; a missing classification counts as public);
#     - it has no acl_groups, or the principal belongs to at least one of them (an empty list admits nobody).
#   Anything undefined (no principal id, unknown clearance or classification) denies.
# custom:
#   owner: governance
package ragconf.access

levels := {"public": 0, "internal": 1, "confidential": 2, "restricted": 3}

# METADATA
# title: A usable principal
# description: A non-empty string id, a known clearance and a list of groups.
valid_principal if {
	is_string(input.principal.id)
	input.principal.id != ""
	levels[input.principal.clearance] >= 0
	is_array(input.principal.groups)
}

clearance := levels[input.principal.clearance] if valid_principal

principal_tenant := t if {
	t := input.principal.tenant
	is_string(t)
}

missing(meta, key) if object.get(meta, key, null) == null

missing(meta, key) if not is_object(meta)

tenant_ok(meta) if missing(meta, "tenant")

tenant_ok(meta) if meta.tenant == principal_tenant

doc_level(meta) := 0 if missing(meta, "classification")

doc_level(meta) := levels[meta.classification] if not missing(meta, "classification")

groups_ok(meta) if missing(meta, "acl_groups")

groups_ok(meta) if {
	is_array(meta.acl_groups)
	some g in meta.acl_groups
	g in input.principal.groups
}

groups_ok(meta) if {
	is_string(meta.acl_groups)
	meta.acl_groups in input.principal.groups
}

clearance_ok(meta) if clearance >= doc_level(meta)

visible(meta) if {
	valid_principal
	tenant_ok(meta)
	clearance_ok(meta)
	groups_ok(meta)
}

# METADATA
# title: Per-document check
# description: input.document.meta is visible to input.principal.
default allow := false

allow if visible(input.document.meta)

# METADATA
# title: Why a document is not visible
# description: |
#   The conditions of `visible` that input.document.meta fails for input.principal: "principal" (not usable),
#   "tenant", "clearance" (below the classification, or an unknown classification), "groups". Empty when the
#   document is visible. `ragconf policy explain` reports it; a denial it does not explain is a custom rule.
denied_by contains "principal" if not valid_principal

denied_by contains "tenant" if not tenant_ok(input.document.meta)

denied_by contains "clearance" if {
	valid_principal
	not clearance_ok(input.document.meta)
}

denied_by contains "groups" if not groups_ok(input.document.meta)

# METADATA
# title: Batched check
# description: Ids of the input.documents (each {id, meta}) visible to input.principal, in one evaluation.
allowed_ids contains d.id if {
	some d in input.documents
	visible(d.meta)
}

tenant_condition := {"field": "meta.tenant", "operator": "in", "value": [null, principal_tenant]}

tenant_condition := {"field": "meta.tenant", "operator": "==", "value": null} if not principal_tenant

ordered_levels := ["public", "internal", "confidential", "restricted"]

allowed_levels := [name | name := ordered_levels[_]; levels[name] <= clearance]

# METADATA
# title: Retrieval filter
# description: |
#   The same visibility as `visible`, as a Haystack filter for the store. Undefined when the principal is
#   not usable, which the framework treats as deny.
filter := {"operator": "AND", "conditions": [
	tenant_condition,
	{"field": "meta.classification", "operator": "in", "value": array.concat([null], allowed_levels)},
	{"operator": "OR", "conditions": [
		{"field": "meta.acl_groups", "operator": "==", "value": null},
		{"field": "meta.acl_groups", "operator": "in", "value": input.principal.groups},
	]},
]} if valid_principal
