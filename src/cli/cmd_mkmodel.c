/* placeholder: replaced by the layer that owns this command */
#include <stdio.h>
#include "cli/commands.h"
int cmd_mkmodel(int argc, char **argv)
{
    (void)argc; (void)argv;
    fprintf(stderr, "bitnet mkmodel: not built yet\n");
    return 2;
}
