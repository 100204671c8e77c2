#!/bin/sh
# Makes libs/greeter.jar from greeter-src/, as a user would before packing the
# archive (the build fetches nothing: jars in libs/ are the dependencies).
# Run in this directory with any JDK 17+; the shared test runs it in the
# runtime image, then uploads src/ and libs/greeter.jar.
set -eu
classes=$(mktemp -d)
javac --release 17 -d "$classes" greeter-src/greeter/Greeter.java
mkdir -p libs
jar --create --file libs/greeter.jar -C "$classes" .
rm -rf "$classes"
echo "made libs/greeter.jar"
