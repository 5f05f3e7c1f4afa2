// Command metriccheck checks that every metric a Prometheus rules file or a Grafana dashboard
// uses is one the code exports, with the label values it exports.
//
//	metriccheck -exposition operator.txt -exposition agent.txt [-external name,...] \
//	    [-rules alerts.yaml]... [-dashboard dashboard.json]...
//
// The expositions are /metrics texts (Prometheus or OpenMetrics format) rendered by the code's
// own registries (the Rust tests write them). Every expression is parsed with Prometheus's own
// PromQL parser; for each vector selector:
//   - its metric name must be a sample name of an exposition, or listed in -external (series
//     other software exports, e.g. the kubelet's cAdvisor metrics);
//   - for each = or != matcher on a label, an exported sample of that metric must carry the
//     label with that value (catches misspelled label names and enum values); regex matchers
//     are not checked.
//
// Grafana variables are replaced before parsing: $__rate_interval and $__interval by 5m, other
// $variables by .* (they appear in regex matchers). Exits 1 listing every problem.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v3"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

// series maps a sample name to its labels and their exported values.
type series map[string]map[string]map[string]bool

var sampleLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+\S+`)

// parseLabels reads `a="x",b="y\"z"`.
func parseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	for len(s) > 0 {
		eq := strings.IndexByte(s, '=')
		if eq < 0 || eq+1 >= len(s) || s[eq+1] != '"' {
			return nil, fmt.Errorf("bad label set %q", s)
		}
		name := strings.TrimSpace(s[:eq])
		var b strings.Builder
		i := eq + 2
		for ; i < len(s) && s[i] != '"'; i++ {
			if s[i] == '\\' && i+1 < len(s) {
				i++
				switch s[i] {
				case 'n':
					b.WriteByte('\n')
				default:
					b.WriteByte(s[i])
				}
				continue
			}
			b.WriteByte(s[i])
		}
		if i >= len(s) {
			return nil, fmt.Errorf("unterminated label value in %q", s)
		}
		out[name] = b.String()
		s = strings.TrimPrefix(strings.TrimSpace(s[i+1:]), ",")
	}
	return out, nil
}

func readExposition(path string, into series) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	n := 0
	for _, line := range strings.Split(string(data), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		m := sampleLine.FindStringSubmatch(line)
		if m == nil {
			return fmt.Errorf("%s: not a sample line: %q", path, line)
		}
		ls, err := parseLabels(m[3])
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if into[m[1]] == nil {
			into[m[1]] = map[string]map[string]bool{}
		}
		for k, v := range ls {
			if into[m[1]][k] == nil {
				into[m[1]][k] = map[string]bool{}
			}
			into[m[1]][k][v] = true
		}
		n++
	}
	if n == 0 {
		return fmt.Errorf("%s: no samples", path)
	}
	return nil
}

type expr struct{ where, text string }

func rulesExprs(path string) ([]expr, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var file struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert  string `yaml:"alert"`
				Record string `yaml:"record"`
				Expr   string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(data, &file); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var out []expr
	for _, g := range file.Groups {
		for _, r := range g.Rules {
			out = append(out, expr{fmt.Sprintf("%s: rule %s%s", path, r.Alert, r.Record), r.Expr})
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no rules", path)
	}
	return out, nil
}

type panel struct {
	Title   string  `json:"title"`
	Panels  []panel `json:"panels"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
}

func dashboardExprs(path string) ([]expr, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var dash struct {
		Panels     []panel `json:"panels"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var out []expr
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, t := range p.Targets {
				if t.Expr != "" {
					out = append(out, expr{fmt.Sprintf("%s: panel %q", path, p.Title), t.Expr})
				}
			}
			walk(p.Panels)
		}
	}
	walk(dash.Panels)
	// label_values(metric, label) variables: check the metric and the label.
	labelValues := regexp.MustCompile(`label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)`)
	for _, v := range dash.Templating.List {
		if m := labelValues.FindStringSubmatch(string(v.Query)); m != nil {
			out = append(out, expr{fmt.Sprintf("%s: variable %s", path, v.Name), fmt.Sprintf(`%s{%s=~".+"}`, m[1], m[2])})
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no panel queries", path)
	}
	return out, nil
}

var grafanaVar = regexp.MustCompile(`\$\{?([a-zA-Z_][a-zA-Z0-9_]*)\}?`)

func check(e expr, exported series, external map[string]bool) []string {
	text := grafanaVar.ReplaceAllStringFunc(e.text, func(v string) string {
		name := strings.Trim(v, "${}")
		if name == "__rate_interval" || name == "__interval" || name == "__range" {
			return "5m"
		}
		return ".*"
	})
	node, err := parser.NewParser(parser.Options{}).ParseExpr(text)
	if err != nil {
		return []string{fmt.Sprintf("%s: %v", e.where, err)}
	}
	var problems []string
	selectors := 0
	parser.Inspect(node, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		selectors++
		name := vs.Name
		if external[name] {
			return nil
		}
		got, ok := exported[name]
		if !ok {
			problems = append(problems, fmt.Sprintf("%s: metric %s is not exported by the code", e.where, name))
			return nil
		}
		for _, m := range vs.LabelMatchers {
			if m.Name == labels.MetricName {
				continue
			}
			// Labels the labels the scrape adds (target labels, relabelings) are not in the
			// exposition; rules match them with regexes only.
			if m.Type != labels.MatchEqual && m.Type != labels.MatchNotEqual {
				continue
			}
			values, ok := got[m.Name]
			if !ok {
				problems = append(problems, fmt.Sprintf("%s: metric %s has no label %s", e.where, name, m.Name))
				continue
			}
			if !values[m.Value] {
				have := make([]string, 0, len(values))
				for v := range values {
					have = append(have, v)
				}
				sort.Strings(have)
				problems = append(problems, fmt.Sprintf("%s: metric %s never has %s=%q (exported: %s)", e.where, name, m.Name, m.Value, strings.Join(have, ", ")))
			}
		}
		return nil
	})
	if selectors == 0 {
		problems = append(problems, fmt.Sprintf("%s: no metric in %q", e.where, e.text))
	}
	return problems
}

func main() {
	var expositions, rules, dashboards list
	externalFlag := flag.String("external", "", "comma-separated metric names exported by other software")
	flag.Var(&expositions, "exposition", "a /metrics text the code renders (repeatable)")
	flag.Var(&rules, "rules", "a Prometheus rules file (repeatable)")
	flag.Var(&dashboards, "dashboard", "a Grafana dashboard JSON (repeatable)")
	flag.Parse()
	if len(expositions) == 0 || len(rules)+len(dashboards) == 0 {
		fmt.Fprintln(os.Stderr, "usage: metriccheck -exposition FILE... (-rules FILE | -dashboard FILE)...")
		os.Exit(2)
	}
	exported := series{}
	for _, path := range expositions {
		if err := readExposition(path, exported); err != nil {
			fmt.Fprintln(os.Stderr, "metriccheck:", err)
			os.Exit(2)
		}
	}
	external := map[string]bool{}
	for _, n := range strings.Split(*externalFlag, ",") {
		if n != "" {
			external[n] = true
		}
	}
	var exprs []expr
	for _, path := range rules {
		es, err := rulesExprs(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "metriccheck:", err)
			os.Exit(2)
		}
		exprs = append(exprs, es...)
	}
	for _, path := range dashboards {
		es, err := dashboardExprs(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "metriccheck:", err)
			os.Exit(2)
		}
		exprs = append(exprs, es...)
	}
	var problems []string
	for _, e := range exprs {
		problems = append(problems, check(e, exported, external)...)
	}
	if len(problems) > 0 {
		for _, p := range problems {
			fmt.Println("FAIL", p)
		}
		fmt.Printf("metriccheck: %d problem(s) in %d expressions\n", len(problems), len(exprs))
		os.Exit(1)
	}
	fmt.Printf("metriccheck: %d expressions, every metric and label value is exported (%d exported metrics)\n", len(exprs), len(exported))
}
