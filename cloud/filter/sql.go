package filter

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/antlr/antlr4/runtime/Go/antlr"
	cesql "github.com/cloudevents/sdk-go/sql/v2"
	"github.com/cloudevents/sdk-go/sql/v2/gen"
	cesqlparser "github.com/cloudevents/sdk-go/sql/v2/parser"
	"github.com/cloudevents/sdk-go/sql/v2/runtime"
	"github.com/cloudevents/sdk-go/sql/v2/utils"
	"github.com/cloudevents/sdk-go/v2/event"
)

// Why CESQL is parsed twice.
//
// sdk-go's parser (sql/v2 v2.16.2) is the evaluator we want, but as a
// validator it falls short: it panics on inputs such as "1+1", "EXISTS",
// "TRUE AND" or "a.b" (nil expressions reach its tree visitor); its syntax
// errors carry no position or message ("parse error: syntax error: "); its
// lexer prints token errors to stderr; and unknown functions or wrong arities
// only show up when an event is evaluated. So compileSQL first runs the
// generated ANTLR lexer and parser itself, with listeners that collect
// "line:col message" errors and print nothing, and walks the tree to resolve
// every function call. Only an expression that passes is handed to the sdk's
// parser, inside a recover, to build the evaluator.
//
// The ANTLR Go runtime v1.4 shares its DFA caches between parser instances
// without locking, so parsing is serialised by parseMu. Compiling a filter is
// rare (subscription create/update); evaluation takes no lock.
var parseMu sync.Mutex

type sqlMatcher struct {
	expr cesql.Expression
}

func compileSQL(path, src string) (m Matcher, err error) {
	if strings.TrimSpace(src) == "" {
		return nil, errorf(path, "empty expression")
	}
	if len(src) > MaxSQLLen {
		return nil, errorf(path, "expression longer than %d bytes", MaxSQLLen)
	}
	parseMu.Lock()
	defer parseMu.Unlock()
	defer func() {
		if r := recover(); r != nil {
			m, err = nil, errorf(path, "expression not supported by the CESQL parser: %v", r)
		}
	}()
	if err := checkSQL(src); err != nil {
		return nil, &Error{Path: path, Err: err}
	}
	expr, err := cesqlparser.Parse(src)
	if err != nil {
		return nil, &Error{Path: path, Err: err}
	}
	if expr == nil {
		return nil, errorf(path, "expression not supported by the CESQL parser")
	}
	return sqlMatcher{expr: expr}, nil
}

// Match reports whether the expression's result, coerced to boolean, is
// true. Evaluation errors (and panics in user-defined functions) mean false.
func (s sqlMatcher) Match(e *event.Event) (ok bool) {
	defer func() {
		if r := recover(); r != nil {
			ok = false
		}
	}()
	v, err := s.expr.Evaluate(*e)
	if err != nil {
		return false
	}
	b, err := utils.Cast(v, cesql.BooleanType)
	if err != nil {
		return false
	}
	ok, _ = b.(bool)
	return ok
}

// syntaxErrors collects ANTLR's complaints instead of printing them.
type syntaxErrors struct {
	*antlr.DefaultErrorListener
	errs []string
}

func (l *syntaxErrors) SyntaxError(_ antlr.Recognizer, _ any, line, column int, msg string, _ antlr.RecognitionException) {
	if len(l.errs) < 5 {
		l.errs = append(l.errs, fmt.Sprintf("line %d:%d: %s", line, column+1, msg))
	}
}

// checkSQL parses src with the generated grammar and reports syntax errors
// with their positions, and calls of functions the CESQL runtime does not
// have (name and arity).
func checkSQL(src string) error {
	listener := &syntaxErrors{DefaultErrorListener: antlr.NewDefaultErrorListener()}
	var in antlr.CharStream = antlr.NewInputStream(src)
	in = cesqlparser.NewCaseChangingStream(in, true)
	lexer := gen.NewCESQLParserLexer(in)
	lexer.RemoveErrorListeners()
	lexer.AddErrorListener(listener)
	p := gen.NewCESQLParserParser(antlr.NewCommonTokenStream(lexer, antlr.TokenDefaultChannel))
	p.RemoveErrorListeners()
	p.AddErrorListener(listener)
	tree := p.Cesql()
	if len(listener.errs) > 0 {
		return fmt.Errorf("syntax error: %s", strings.Join(listener.errs, "; "))
	}
	return checkFunctions(tree, 0)
}

func checkFunctions(t antlr.Tree, depth int) error {
	if depth > 4*MaxSQLLen { // unreachable for inputs within MaxSQLLen; a guard, not a limit
		return errors.New("expression nested too deeply")
	}
	if call, ok := t.(*gen.FunctionInvocationExpressionContext); ok {
		id := call.FunctionIdentifier()
		params, _ := call.FunctionParameterList().(*gen.FunctionParameterListContext)
		if id == nil || params == nil {
			return errors.New("malformed function call")
		}
		name := strings.ToUpper(id.GetText())
		n := len(params.AllExpression())
		if runtime.ResolveFunction(name, n) == nil {
			return fmt.Errorf("unknown function %s with %d argument(s)", name, n)
		}
	}
	for _, c := range t.GetChildren() {
		if err := checkFunctions(c, depth+1); err != nil {
			return err
		}
	}
	return nil
}
