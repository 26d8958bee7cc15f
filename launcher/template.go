package launcher

import (
	"encoding/json"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
)

// SafeSubstitute is Python's string.Template(tmpl).safe_substitute(vars):
// "$$" becomes "$"; "$name" and "${name}" (name: [_a-zA-Z][_a-zA-Z0-9]*,
// the longest run for $name) become the value of name, formatted as
// Python's str() would; an unknown name and a "$" that starts neither form
// are left as they are.
func SafeSubstitute(tmpl string, vars map[string]any) string {
	var b strings.Builder
	for _, sg := range substitutePass(tmpl, vars, nil) {
		b.WriteString(sg.s)
	}
	return b.String()
}

// segment is a piece of a template being substituted: the template's own
// text (which a later pass reads) or a value put in by a pass (data,
// never read again).
type segment struct {
	s    string
	data bool
}

// substitutePass is one safe_substitute pass over tmpl, appended to out:
// the template's text as literal segments (adjacent ones merged), each
// value as a data segment.
func substitutePass(tmpl string, vars map[string]any, out []segment) []segment {
	lit := func(s string) {
		if s == "" {
			return
		}
		if n := len(out); n > 0 && !out[n-1].data {
			out[n-1].s += s
			return
		}
		out = append(out, segment{s: s})
	}
	val := func(v any) {
		if s := PyStr(v); s != "" {
			out = append(out, segment{s: s, data: true})
		}
	}
	n := len(tmpl)
	start := 0 // of the literal text not yet emitted
	for i := 0; i < n; {
		if tmpl[i] != '$' {
			i++
			continue
		}
		// Alternatives in Python's order: escaped, named, braced, invalid.
		if i+1 < n && tmpl[i+1] == '$' {
			lit(tmpl[start:i] + "$")
			i += 2
			start = i
			continue
		}
		if i+1 < n && identStart(tmpl[i+1]) {
			j := i + 2
			for j < n && identChar(tmpl[j]) {
				j++
			}
			if v, ok := vars[tmpl[i+1:j]]; ok {
				lit(tmpl[start:i])
				val(v)
				start = j
			}
			i = j
			continue
		}
		if i+2 < n && tmpl[i+1] == '{' && identStart(tmpl[i+2]) {
			j := i + 3
			for j < n && identChar(tmpl[j]) {
				j++
			}
			if j < n && tmpl[j] == '}' {
				if v, ok := vars[tmpl[i+2:j]]; ok {
					lit(tmpl[start:i])
					val(v)
					start = j + 1
				}
				i = j + 1
				continue
			}
		}
		// Invalid: the "$" stays and scanning goes on after it.
		i++
	}
	lit(tmpl[start:])
	return out
}

// Substitute is the Python launcher's replaceVariables, one
// safe_substitute pass per mapping in order, with one difference: a pass
// reads only the template's own text, never a value an earlier pass put
// in. So "$$" written in the template still becomes "$" after two passes
// ("$$$$" for a literal "$"), and "${name}" that the first pass made of
// "$${name}" names a property, but a client's value such as
// "${licenseKey}" is data: it comes out as sent, never expanded.
func Substitute(tmpl string, passes ...map[string]any) string {
	segs := []segment{{s: tmpl}}
	for _, vars := range passes {
		next := make([]segment, 0, len(segs))
		for _, sg := range segs {
			if sg.data {
				next = append(next, sg)
				continue
			}
			next = substitutePass(sg.s, vars, next)
		}
		segs = next
	}
	var b strings.Builder
	for _, sg := range segs {
		b.WriteString(sg.s)
	}
	return b.String()
}

// substituteValue substitutes every string inside a JSON value (strings
// in lists and objects included); other values are returned unchanged.
func substituteValue(v any, passes ...map[string]any) any {
	switch x := v.(type) {
	case string:
		return Substitute(x, passes...)
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = substituteValue(e, passes...)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = substituteValue(e, passes...)
		}
		return out
	}
	return v
}

func identStart(c byte) bool { return c == '_' || (c|0x20 >= 'a' && c|0x20 <= 'z') }
func identChar(c byte) bool  { return identStart(c) || (c >= '0' && c <= '9') }

func isIdentifier(s string) bool {
	if s == "" || !identStart(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if !identChar(s[i]) {
			return false
		}
	}
	return true
}

// PyStr formats a decoded JSON value as Python's str() formats the value
// Python's json module would have decoded: "9001" for 9001, "1.0" for
// 1.0, "True", "None", "['a', 1]", "{'k': 'v'}" (object keys sorted).
func PyStr(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	return pyRepr(v)
}

func pyRepr(v any) string {
	switch x := v.(type) {
	case nil:
		return "None"
	case string:
		return pyQuote(x)
	case bool:
		if x {
			return "True"
		}
		return "False"
	case json.Number:
		s := string(x)
		if strings.ContainsAny(s, ".eE") {
			f, err := x.Float64()
			if err != nil {
				return s
			}
			return pyFloat(f)
		}
		return s
	case float64:
		if x == math.Trunc(x) && math.Abs(x) < 1e15 {
			// A Go-side number without a fraction came from an integer.
			return strconv.FormatInt(int64(x), 10)
		}
		return pyFloat(x)
	case int:
		return strconv.Itoa(x)
	case int64:
		return strconv.FormatInt(x, 10)
	case []any:
		parts := make([]string, len(x))
		for i, e := range x {
			parts[i] = pyRepr(e)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case []string:
		parts := make([]string, len(x))
		for i, e := range x {
			parts[i] = pyQuote(e)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = pyQuote(k) + ": " + pyRepr(x[k])
		}
		return "{" + strings.Join(parts, ", ") + "}"
	}
	return reflect.ValueOf(v).String()
}

// pyFloat is Python's repr of a float: the shortest digits that round
// trip, fixed notation for exponents -4..15 with at least one decimal,
// scientific notation ("1e+16", "1.5e-05") otherwise.
func pyFloat(f float64) string {
	if math.IsNaN(f) {
		return "nan"
	}
	if math.IsInf(f, 1) {
		return "inf"
	}
	if math.IsInf(f, -1) {
		return "-inf"
	}
	e := strconv.FormatFloat(f, 'e', -1, 64) // d.ddde±XX
	mant, exps, _ := strings.Cut(e, "e")
	exp, _ := strconv.Atoi(exps)
	if exp < -4 || exp >= 16 {
		sign := "+"
		if exp < 0 {
			sign = "-"
			exp = -exp
		}
		es := strconv.Itoa(exp)
		if len(es) < 2 {
			es = "0" + es
		}
		return mant + "e" + sign + es
	}
	s := strconv.FormatFloat(f, 'f', -1, 64)
	if !strings.ContainsAny(s, ".") {
		s += ".0"
	}
	return s
}

// pyQuote is Python's repr of a str (the common cases).
func pyQuote(s string) string {
	q := byte('\'')
	if strings.IndexByte(s, '\'') >= 0 && strings.IndexByte(s, '"') < 0 {
		q = '"'
	}
	var b strings.Builder
	b.WriteByte(q)
	for _, r := range s {
		if r == '\\' {
			b.WriteString(`\\`)
			continue
		}
		if r == rune(q) {
			b.WriteByte('\\')
			b.WriteRune(r)
			continue
		}
		if r == '\n' {
			b.WriteString(`\n`)
			continue
		}
		if r == '\r' {
			b.WriteString(`\r`)
			continue
		}
		if r == '\t' {
			b.WriteString(`\t`)
			continue
		}
		if r < 0x20 || r == 0x7f {
			b.WriteString(`\x`)
			b.WriteString(strconv.FormatInt(int64(r)+0x100, 16)[1:])
			continue
		}
		b.WriteRune(r)
	}
	b.WriteByte(q)
	return b.String()
}

// jsonEqual compares two decoded JSON values, numbers by value.
func jsonEqual(a, b any) bool {
	if fa, ok := number(a); ok {
		fb, ok := number(b)
		return ok && fa == fb
	}
	switch x := a.(type) {
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !jsonEqual(x[i], y[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, v := range x {
			w, ok := y[k]
			if !ok || !jsonEqual(v, w) {
				return false
			}
		}
		return true
	}
	return a == b
}

func number(v any) (float64, bool) {
	switch x := v.(type) {
	case json.Number:
		f, err := x.Float64()
		return f, err == nil
	case float64:
		return x, true
	case int:
		return float64(x), true
	}
	return 0, false
}
