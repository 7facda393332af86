/* placeholder: replaced by the layer that owns this command */
#include <stdio.h>
#include "cli/commands.h"
int cmd_bench(int argc, char **argv)
{
    (void)argc; (void)argv;
    fprintf(stderr, "bitnet bench: not built yet\n");
    return 2;
}
