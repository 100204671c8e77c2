#!/bin/sh
# Builds a Java deployment inside the build container (server/engine/builder.py).
# Unpacks $FUNCTIONS_SOURCE into $FUNCTIONS_CODE (the working directory) and
# compiles it with the image's JDK (javac, through Build.java); no Maven or
# Gradle, and nothing is fetched.
#
# Layout of the archive:
#   src/Index.java     the entrypoint (any path: the function's entrypoint
#                      setting). Either Appwrite's style, a class body:
#                          import java.util.Map;
#                          public RuntimeResponse main(RuntimeRequest req, RuntimeResponse res) { ... }
#                      or a class named after the file with that method
#                      (static or not), in the default package.
#   src/**/*.java      the sources: every .java file under src/; without a
#                      src/ directory, every .java file outside libs/.
#                      Directories whose name starts with "." are skipped.
#   libs/*.jar         dependencies: every jar directly in libs/ is on the
#                      classpath when compiling and when running (build
#                      them elsewhere and ship them in the archive, e.g.
#                      `jar cf libs/greeter.jar -C classes .`).
# Output, next to the unpacked code: .classes/ (the compiled classes and
# the runtime's RuntimeRequest and RuntimeResponse from api/, which the
# function's code uses without an import) and .classes/.sources (which
# class each source file became), read by Worker.java at load.
set -eu

here=$(dirname "$0")
cd "$FUNCTIONS_CODE"
tar -xzf "$FUNCTIONS_SOURCE"

if [ -e .classes ]; then
  echo "Removing the archive's .classes/ (the build writes it)"
  rm -rf .classes
fi
if [ -d libs ]; then
  for jar in libs/*.jar; do
    [ -f "$jar" ] && echo "Dependency: $jar"
  done
fi
# One JVM: Build.java runs javac in process. Serial GC and no perf data file
# keep a small build container small.
exec java -XX:+UseSerialGC -XX:-UsePerfData -Dfile.encoding=UTF-8 \
  "$here/Build.java" "$here/api"
