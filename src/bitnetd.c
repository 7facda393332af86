/* bitnetd: the daemon's main. Everything lives in src/server/ (master.c is the entry point). */
#include "server/master.h"

int main(int argc, char **argv)
{
    return bn_master_main(argc, argv);
}
