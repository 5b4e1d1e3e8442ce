// Command structure prints the figures the code's shape is held to: the
// longest non-test file and function, the receiver with the most methods,
// the Kind comparisons in server/ and the files in server/.
//
//	go run ./scripts/structure
package main

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

type figure struct {
	name string
	n    int
}

func main() {
	fset := token.NewFileSet()
	var files, funcs []figure
	methods := map[string]int{}
	kinds, serverFiles := 0, 0
	filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") || d.Name() == "build" || d.Name() == "scripts") && path != "." {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files = append(files, figure{path, strings.Count(string(src), "\n")})
		f, err := parser.ParseFile(fset, path, src, 0)
		if err != nil {
			return err
		}
		pkg := filepath.Dir(path)
		if pkg == "server" {
			serverFiles++
		}
		for _, decl := range f.Decls {
			fd, ok := decl.(*ast.FuncDecl)
			if !ok {
				continue
			}
			lines := fset.Position(fd.End()).Line - fset.Position(fd.Pos()).Line + 1
			name := fd.Name.Name
			if fd.Recv != nil {
				t := fd.Recv.List[0].Type
				if st, ok := t.(*ast.StarExpr); ok {
					t = st.X
				}
				if id, ok := t.(*ast.Ident); ok {
					methods[pkg+"."+id.Name]++
					name = id.Name + "." + name
				}
			}
			funcs = append(funcs, figure{path + ":" + name, lines})
		}
		if pkg == "server" {
			ast.Inspect(f, func(n ast.Node) bool {
				if se, ok := n.(*ast.SelectorExpr); ok && se.Sel.Name == "Kind" {
					kinds++
				}
				return true
			})
		}
		return nil
	})
	top := func(title string, fs []figure, k, over int) {
		sort.Slice(fs, func(i, j int) bool { return fs[i].n > fs[j].n })
		n := 0
		for _, f := range fs {
			if f.n > over {
				n++
			}
		}
		fmt.Printf("%s (over %d: %d)\n", title, over, n)
		for _, f := range fs[:max(min(k, len(fs)), min(n, len(fs)))] {
			fmt.Printf("  %5d  %s\n", f.n, f.name)
		}
	}
	top("longest files", files, 5, 500)
	top("longest functions", funcs, 5, 80)
	var recv []figure
	for k, v := range methods {
		recv = append(recv, figure{k, v})
	}
	top("receivers by methods", recv, 5, 40)
	fmt.Printf("uses of .Kind in server/: %d\nfiles in server/: %d\n", kinds, serverFiles)
}
