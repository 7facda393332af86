/* placeholder: replaced by the layer that owns this command */
#include <stdio.h>
#include "cli/commands.h"
int cmd_tokenize(int argc, char **argv)
{
    (void)argc; (void)argv;
    fprintf(stderr, "bitnet tokenize: not built yet\n");
    return 2;
}
