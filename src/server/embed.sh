#!/bin/sh
# embed.sh FILE SYMBOL [HEADER]: writes to stdout a C file that defines `const char SYMBOL_html[]`
# (the bytes of FILE, then a NUL that is not counted) and `const size_t SYMBOL_len`, including
# HEADER (its declarations) when given. The build uses it to embed src/server/chat_page.html in
# bitnetd. POSIX od and sed only (xxd is not always installed); the output depends on nothing
# but the file's bytes. Bytes are char constants ('\xNN'), not ints, so no compiler warns
# about bytes >= 0x80 where char is signed.
set -e
[ $# -ge 2 ] && [ $# -le 3 ] || { echo "usage: embed.sh FILE SYMBOL [HEADER]" >&2; exit 2; }
file=$1 sym=$2 header=${3-}
[ -r "$file" ] || { echo "embed.sh: cannot read $file" >&2; exit 1; }

echo "/* Generated from $(basename "$file") by embed.sh at build time: do not edit. */"
echo "#include <stddef.h>"
[ -z "$header" ] || printf '\n#include "%s"\n' "$header"
printf '\nconst char %s_html[] = {\n' "$sym"
# od prints the bytes as hex pairs, 16 a line; each pair becomes "'\xNN',".
od -A n -v -t x1 "$file" |
    sed -e "s/[[:space:]]*\([0-9a-fA-F][0-9a-fA-F]\)/'\\\\x\1',/g" -e 's/^/    /'
printf "    '\\\\0'\n};\nconst size_t %s_len = sizeof %s_html - 1;\n" "$sym" "$sym"
