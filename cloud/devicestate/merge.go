package devicestate

// mergePatch applies patch to target as RFC 7386 JSON Merge Patch
// describes and returns the result. Both are decoded JSON (map[string]any,
// []any, string, json.Number, bool, nil). A patch that is an object merges
// key by key (a null value deletes the key, an object value merges
// recursively); any other patch replaces the target. target's maps are
// modified in place; patch is not modified, but parts of it end up in the
// result, so the caller must not reuse it.
func mergePatch(target, patch any) any {
	p, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	t, ok := target.(map[string]any)
	if !ok {
		t = map[string]any{}
	}
	for k, v := range p {
		if v == nil {
			delete(t, k)
			continue
		}
		t[k] = mergePatch(t[k], v)
	}
	return t
}
