# METADATA
# title: Generator routing
# description: |
#   Picks the generator profile for a request from the configured profiles (input.profiles: name,
#   locality, provider, region). Documents classified confidential or restricted may only go to a local
#   profile; a tenant may be pinned to providers/regions (data.ragconf.routing_data.tenants); blocked
#   tenants are refused. The request's preferred profile wins when allowed, otherwise the first allowed.
# custom:
#   owner: governance
package ragconf.routing

sensitive := {"confidential", "restricted"}

needs_local if {
	some d in input.documents
	d.classification in sensitive
}

pin := data.ragconf.routing_data.tenants[input.principal.tenant]

locality_ok(p) if not needs_local

locality_ok(p) if p.locality == "local"

pin_ok(p) if not pin

pin_ok(p) if {
	pin
	provider_ok(p)
	region_ok(p)
}

provider_ok(p) if not pin.providers

provider_ok(p) if p.locality == "local"

provider_ok(p) if p.provider in pin.providers

region_ok(p) if not pin.regions

region_ok(p) if p.locality == "local"

region_ok(p) if p.region in pin.regions

blocked if input.principal.tenant in data.ragconf.routing_data.blocked_tenants

allowed := [p.name | some p in input.profiles; locality_ok(p); pin_ok(p)]

choice := input.request.profile if input.request.profile in allowed

choice := allowed[0] if {
	not input.request.profile in allowed
	count(allowed) > 0
}

reason := "confidential or restricted documents may only go to a local generator" if needs_local

reason := "no sensitive documents" if not needs_local

# METADATA
# title: Routing decision
# description: "{profile, refused, reason}; undefined (no usable principal) is treated as a refusal."
decision := {"profile": null, "refused": true, "reason": "the tenant is blocked"} if {
	input.principal.id
	blocked
}

decision := {"profile": choice, "refused": false, "reason": reason} if {
	input.principal.id
	not blocked
	choice
}

decision := {"profile": null, "refused": true, "reason": concat("", ["no configured generator is allowed: ", reason])} if {
	input.principal.id
	not blocked
	not choice
}
