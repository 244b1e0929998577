package forward

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// chainDump is one chain as `iptables -S CHAIN` lists it.
type chainDump struct {
	policy string     // ACCEPT or DROP for a built-in chain, empty for a user chain
	rules  [][]string // each rule's specification, after "-A CHAIN"
}

// parseList reads the lines of `iptables -S chain`. Warnings (lines that
// start with #, such as iptables-nft's note that legacy tables exist) and
// lines of other chains are skipped.
func parseList(chain string, lines []string) (chainDump, error) {
	var d chainDump
	for _, line := range lines {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		tok, err := tokenize(line)
		if err != nil {
			return chainDump{}, fmt.Errorf("parse %q: %w", line, err)
		}
		if len(tok) < 2 || tok[1] != chain {
			continue
		}
		switch tok[0] {
		case "-P":
			if len(tok) != 3 {
				return chainDump{}, fmt.Errorf("parse %q: policy line with %d fields", line, len(tok))
			}
			d.policy = tok[2]
		case "-A":
			d.rules = append(d.rules, tok[2:])
		}
	}
	return d, nil
}

// tokenize splits a line of `iptables -S` into arguments. iptables quotes
// an argument with characters outside [A-Za-z0-9_-] in double quotes and
// escapes ", ' and \ inside with a backslash (xtables_save_string).
func tokenize(line string) ([]string, error) {
	var out []string
	for i := 0; i < len(line); {
		switch line[i] {
		case ' ', '\t':
			i++
			continue
		case '"':
			var b strings.Builder
			i++
			for {
				if i >= len(line) {
					return nil, fmt.Errorf("unterminated quote")
				}
				c := line[i]
				if c == '"' {
					i++
					break
				}
				if c == '\\' && i+1 < len(line) {
					i++
					c = line[i]
				}
				b.WriteByte(c)
				i++
			}
			if i < len(line) && line[i] != ' ' && line[i] != '\t' {
				return nil, fmt.Errorf("text after closing quote")
			}
			out = append(out, b.String())
		default:
			j := i
			for j < len(line) && line[j] != ' ' && line[j] != '\t' {
				j++
			}
			out = append(out, line[i:j])
			i = j
		}
	}
	return out, nil
}

// quote writes an argument the way `iptables -S` does where it matters:
// strings with blanks, quotes or backslashes (comments) in double quotes,
// with ", ' and \ escaped. iptables also quotes comments with other
// punctuation; tokenize reads both forms.
func quote(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\"'\\") {
		return s
	}
	var b strings.Builder
	b.WriteByte('"')
	for _, c := range []byte(s) {
		if c == '"' || c == '\\' || c == '\'' {
			b.WriteByte('\\')
		}
		b.WriteByte(c)
	}
	b.WriteByte('"')
	return b.String()
}

// specLine writes a rule as `iptables -S` prints it.
func specLine(chain string, spec []string) string {
	parts := []string{"-A", chain}
	for _, s := range spec {
		parts = append(parts, quote(s))
	}
	return strings.Join(parts, " ")
}

// withoutComments drops the comment matches of a rule.
func withoutComments(spec []string) []string {
	var out []string
	for i := 0; i < len(spec); i++ {
		if spec[i] == "-m" && i+3 < len(spec) && spec[i+1] == "comment" && spec[i+2] == "--comment" {
			i += 3
			continue
		}
		out = append(out, spec[i])
	}
	return out
}

// comment returns the first comment of a rule.
func comment(spec []string) string {
	for i := 0; i+3 < len(spec); i++ {
		if spec[i] == "-m" && spec[i+1] == "comment" && spec[i+2] == "--comment" {
			return spec[i+3]
		}
	}
	return ""
}

// jumpsToChain reports whether a rule jumps (or goes) to l4lb's chain.
func jumpsToChain(spec []string) bool {
	for i := 0; i+1 < len(spec); i++ {
		if (spec[i] == "-j" || spec[i] == "-g") && spec[i+1] == Chain {
			return true
		}
	}
	return false
}

// dropsAll reports whether a rule drops or rejects every packet that
// reaches it: no match but comments, target DROP or REJECT.
func dropsAll(spec []string) bool {
	s := withoutComments(spec)
	if len(s) < 2 || s[0] != "-j" {
		return false
	}
	switch s[1] {
	case "DROP":
		return len(s) == 2
	case "REJECT":
		return len(s) == 2 || len(s) == 4 && s[2] == "--reject-with"
	}
	return false
}

// blocks reports whether a FORWARD chain drops forwarded traffic that no
// rule accepts: its policy is DROP, or its last rule (l4lb's jump aside)
// drops or rejects everything, as firewalld's iptables backend does.
// Rules that drop some traffic, and drops inside chains that FORWARD jumps
// to, are the host's decisions and are not second-guessed.
func blocks(d chainDump) bool {
	if d.policy == "DROP" {
		return true
	}
	for i := len(d.rules) - 1; i >= 0; i-- {
		if jumpsToChain(d.rules[i]) {
			continue
		}
		return dropsAll(d.rules[i])
	}
	return false
}

// parseRule reads a rule of l4lb's chain; ok is false for anything that is
// not exactly the shape rule.spec writes.
func parseRule(spec []string) (r rule, ok bool) {
	s := withoutComments(spec)
	if len(s) != 8 || !slices.Equal(s[:5], []string{"-m", "conntrack", "--ctstate", "DNAT", "--ctorigdst"}) ||
		!slices.Equal(s[6:], []string{"-j", "ACCEPT"}) || len(s) == len(spec) {
		return rule{}, false
	}
	dest, err := parseDest(s[5])
	if err != nil {
		return rule{}, false
	}
	return rule{dest: dest, comment: comment(spec)}, true
}

func parseDest(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		return p.Masked(), err
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// diffRules compares l4lb's chain with the rules it should hold: del are
// the specifications to delete (unknown shapes, unwanted destinations,
// duplicates), add the rules to append. The order of the chain does not
// matter: every rule accepts, on disjoint or nested destinations.
func diffRules(have [][]string, want []rule) (del [][]string, add []rule) {
	wanted := map[rule]bool{}
	for _, r := range want {
		wanted[r] = true
	}
	seen := map[rule]bool{}
	for _, spec := range have {
		r, ok := parseRule(spec)
		if !ok || !wanted[r] || seen[r] {
			del = append(del, spec)
			continue
		}
		seen[r] = true
	}
	for _, r := range want {
		if !seen[r] {
			add = append(add, r)
		}
	}
	return del, add
}
