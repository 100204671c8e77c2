/*
 * Compiles a Java deployment; run by build.sh (which documents the layout)
 * with the Java source launcher, in the code directory:
 *
 *     java Build.java <directory of RuntimeRequest.java and RuntimeResponse.java>
 *
 * - Sources: every *.java file under src/ when the code has a src/ directory,
 *   otherwise every *.java file of the code outside libs/; directories whose
 *   name starts with "." are skipped, and so are module-info.java and a
 *   function's own copies of RuntimeRequest.java / RuntimeResponse.java in
 *   the default package (the runtime's are used).
 * - A file that is a class body rather than a compilation unit (Appwrite's
 *   Index.java: imports, then fields and `public RuntimeResponse main(...)`)
 *   is compiled as the class named after the file (Index), in the package
 *   it declares (usually none). The class header is added on the last import
 *   line (or before the first line when there is none) and the closing brace
 *   after the last line, so line numbers stay those of the file.
 * - Classpath: libs/*.jar (sorted by name), for compiling and running.
 * - Output: .classes/ (the classes, with the runtime's RuntimeRequest and
 *   RuntimeResponse) and .classes/.sources, the index the worker reads:
 *       root<TAB>src
 *       source<TAB>src/Index.java<TAB>Index
 * javac runs in this JVM (javax.tools), so the build starts one JVM only.
 */

import java.io.IOException;
import java.io.PrintWriter;
import java.net.URI;
import java.net.URISyntaxException;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.stream.Collectors;
import java.util.stream.Stream;
import javax.tools.JavaCompiler;
import javax.tools.JavaFileObject;
import javax.tools.SimpleJavaFileObject;
import javax.tools.StandardJavaFileManager;
import javax.tools.ToolProvider;

public final class Build {
    public static void main(String[] args) throws IOException {
        if (args.length != 1) {
            System.err.println("usage: java Build.java API-DIRECTORY");
            System.exit(2);
        }
        Path code = Paths.get("").toAbsolutePath();
        Path api = Paths.get(args[0]);
        String root = Files.isDirectory(code.resolve("src")) ? "src" : ".";
        List<Path> found;
        try (Stream<Path> walk = Files.walk(code.resolve(root))) {
            found = walk.filter(p -> p.toString().endsWith(".java") && Files.isRegularFile(p))
                    .filter(p -> included(code.relativize(p)))
                    .sorted()
                    .collect(Collectors.toList());
        }

        JavaCompiler javac = ToolProvider.getSystemJavaCompiler();
        if (javac == null) {
            System.err.println("error: this Java has no compiler (the image needs a JDK, not a JRE)");
            System.exit(1);
        }
        StandardJavaFileManager files = javac.getStandardFileManager(null, null, StandardCharsets.UTF_8);
        List<JavaFileObject> units = new ArrayList<>();
        StringBuilder index = new StringBuilder("root\t" + root + "\n");
        int wrapped = 0;
        for (Path path : found) {
            String rel = code.relativize(path).toString().replace('\\', '/');
            String file = path.getFileName().toString();
            String base = file.substring(0, file.length() - ".java".length());
            String text;
            try {
                text = StandardCharsets.UTF_8.newDecoder()
                        .onMalformedInput(CodingErrorAction.REPORT)
                        .decode(java.nio.ByteBuffer.wrap(Files.readAllBytes(path))).toString();
            } catch (CharacterCodingException e) {
                System.err.println(rel + ": error: not UTF-8 text");
                System.exit(1);
                return;
            }
            Path shown = Paths.get(rel); // messages name files relative to the code
            if (file.equals("package-info.java")) {
                units.add(files.getJavaFileObjects(shown).iterator().next());
                continue;
            }
            Source source = Source.read(text);
            if (source.pkg.isEmpty() && (base.equals("RuntimeRequest") || base.equals("RuntimeResponse"))) {
                System.out.println("Skipping " + rel + ": the runtime's " + base + " is used");
                continue;
            }
            if (source.bare) {
                String head = source.end == 0 ? "" : text.substring(0, source.end) + " ";
                String body = head + "public class " + base + " { " + text.substring(source.end) + "\n}\n";
                units.add(new Wrapped(rel, body));
                wrapped++;
                System.out.println("Compiling " + rel + " (a class body) as class " + base);
            } else {
                units.add(files.getJavaFileObjects(shown).iterator().next());
            }
            index.append("source\t").append(rel).append('\t')
                    .append(source.pkg.isEmpty() ? base : source.pkg + "." + base).append('\n');
        }
        for (String name : new String[] {"RuntimeRequest.java", "RuntimeResponse.java"}) {
            units.add(files.getJavaFileObjects(api.resolve(name)).iterator().next());
        }

        List<String> jars = new ArrayList<>();
        Path libs = code.resolve("libs");
        if (Files.isDirectory(libs)) {
            try (DirectoryStream<Path> list = Files.newDirectoryStream(libs, "*.jar")) {
                for (Path jar : list) jars.add(jar.toString());
            }
            jars.sort(null);
        }
        Path out = code.resolve(".classes");
        Files.createDirectories(out);
        List<String> options = new ArrayList<>(Arrays.asList("-d", out.toString(), "-encoding", "UTF-8",
                "-implicit:none", "-sourcepath", ""));
        List<String> classpath = new ArrayList<>(jars);
        classpath.add(out.toString()); // never the default ".", the code directory
        options.add("-classpath");
        options.add(String.join(":", classpath));
        System.out.println("Compiling " + (units.size() - 2) + " Java source file(s) from "
                + (root.equals(".") ? "the code" : root + "/") + " with " + jars.size() + " jar(s) from libs/ ("
                + System.getProperty("java.version") + ")");
        System.out.flush();
        PrintWriter diagnostics = new PrintWriter(System.err, true);
        boolean ok = javac.getTask(diagnostics, files, null, options, null, units).call();
        diagnostics.flush();
        if (!ok) {
            System.err.println("error: compilation failed");
            System.exit(1);
        }
        Files.write(out.resolve(".sources"), index.toString().getBytes(StandardCharsets.UTF_8));
        System.out.println("Compiled into .classes/");
    }

    /** Whether a .java file (relative to the code) is one of the sources. */
    private static boolean included(Path rel) {
        for (Path part : rel) {
            if (part.toString().startsWith(".")) return false;
        }
        if (rel.getNameCount() > 1 && rel.getName(0).toString().equals("libs")) return false;
        return !rel.getFileName().toString().equals("module-info.java");
    }

    /** A class body compiled from memory under its file's name (so messages name the file). */
    private static final class Wrapped extends SimpleJavaFileObject {
        private final String text;

        Wrapped(String rel, String text) throws IOException {
            super(uri(rel), JavaFileObject.Kind.SOURCE);
            this.text = text;
        }

        private static URI uri(String rel) throws IOException {
            try {
                return new URI(null, null, rel, null); // relative: javac prints it as is
            } catch (URISyntaxException e) {
                throw new IOException(e);
            }
        }

        @Override
        public CharSequence getCharContent(boolean ignoreEncodingErrors) {
            return text;
        }
    }

    /**
     * What a source file is: its package, where its package and import
     * declarations end, and whether the rest is a class body (bare) rather
     * than type declarations.
     */
    private static final class Source {
        private static final Set<String> MODIFIERS = new HashSet<>(Arrays.asList("public", "abstract", "final",
                "strictfp", "sealed", "static", "private", "protected", "transient", "volatile", "synchronized",
                "native", "default"));
        private static final Set<String> MEMBER_ONLY = new HashSet<>(Arrays.asList("static", "private",
                "protected", "transient", "volatile", "synchronized", "native", "default"));

        String pkg = "";
        int end;
        boolean bare;

        private final List<String> tokens = new ArrayList<>();
        private final List<Integer> ends = new ArrayList<>();

        static Source read(String text) {
            Source s = new Source();
            s.tokenize(text);
            s.analyse();
            return s;
        }

        private String tok(int k) {
            return k < tokens.size() ? tokens.get(k) : "";
        }

        private void analyse() {
            int k = 0, n = tokens.size();
            if (tok(k).equals("package")) {
                StringBuilder name = new StringBuilder();
                for (k++; k < n && !tok(k).equals(";"); k++) name.append(tok(k));
                pkg = name.toString();
                if (k < n) end = ends.get(k++);
            }
            while (k < n && (tok(k).equals("import") || tok(k).equals(";"))) {
                while (k < n && !tok(k).equals(";")) k++;
                if (k < n) end = ends.get(k++);
            }
            while (k < n) {
                if (tok(k).equals(";")) {
                    k++;
                    continue;
                }
                while (true) {
                    if (tok(k).equals("@") && !tok(k + 1).equals("interface")) {
                        k += 2;
                        while (tok(k).equals(".")) k += 2;
                        if (tok(k).equals("(")) k = skip(k, "(", ")");
                    } else if (MODIFIERS.contains(tok(k))) {
                        if (MEMBER_ONLY.contains(tok(k))) {
                            bare = true;
                            return;
                        }
                        k++;
                    } else if (tok(k).equals("non") && tok(k + 1).equals("-") && tok(k + 2).equals("sealed")) {
                        k += 3;
                    } else {
                        break;
                    }
                }
                String t = tok(k);
                boolean type = t.equals("class") || t.equals("interface") || t.equals("enum")
                        || (t.equals("@") && tok(k + 1).equals("interface"))
                        || (t.equals("record") && isIdentifier(tok(k + 1))
                            && (tok(k + 2).equals("(") || tok(k + 2).equals("<")));
                if (!type) {
                    bare = k < n;
                    return;
                }
                while (k < n && !tok(k).equals("{")) k++;
                if (k >= n) return; // not valid Java either way: javac says why
                k = skip(k, "{", "}");
            }
        }

        /** The index after the bracketed group that starts at k. */
        private int skip(int k, String open, String close) {
            int depth = 0;
            for (; k < tokens.size(); k++) {
                if (tokens.get(k).equals(open)) {
                    depth++;
                } else if (tokens.get(k).equals(close) && --depth == 0) {
                    return k + 1;
                }
            }
            return k;
        }

        private static boolean isIdentifier(String t) {
            return !t.isEmpty() && Character.isJavaIdentifierStart(t.codePointAt(0));
        }

        /** Words, numbers and single punctuation characters; comments and literals are left out (literals as "0"). */
        private void tokenize(String s) {
            int i = 0, n = s.length();
            while (i < n) {
                char c = s.charAt(i);
                if (Character.isWhitespace(c)) {
                    i++;
                } else if (s.startsWith("//", i)) {
                    while (i < n && s.charAt(i) != '\n') i++;
                } else if (s.startsWith("/*", i)) {
                    int close = s.indexOf("*/", i + 2);
                    i = close < 0 ? n : close + 2;
                } else if (s.startsWith("\"\"\"", i)) {
                    int k = i + 3;
                    while (k < n && !s.startsWith("\"\"\"", k)) k += s.charAt(k) == '\\' ? 2 : 1;
                    i = Math.min(n, k + 3);
                    add("0", i);
                } else if (c == '"' || c == '\'') {
                    int k = i + 1;
                    while (k < n && s.charAt(k) != c && s.charAt(k) != '\n') k += s.charAt(k) == '\\' ? 2 : 1;
                    i = Math.min(n, k + 1);
                    add("0", i);
                } else if (Character.isJavaIdentifierStart(c) || Character.isDigit(c)) {
                    int k = i;
                    while (k < n && Character.isJavaIdentifierPart(s.charAt(k))) k++;
                    add(s.substring(i, k), k);
                    i = k;
                } else {
                    add(String.valueOf(c), i + 1);
                    i++;
                }
            }
        }

        private void add(String token, int end) {
            tokens.add(token);
            ends.add(end);
        }
    }
}
