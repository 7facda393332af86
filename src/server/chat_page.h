/* The chat page served at GET /: src/server/chat_page.html, embedded at build time
 * (src/server/embed.sh writes chat_page.c), so the binary needs no files and no CDN. */
#ifndef BN_SERVER_CHAT_PAGE_H
#define BN_SERVER_CHAT_PAGE_H

#include <stddef.h>

extern const char bn_chat_page_html[];
extern const size_t bn_chat_page_len;

#endif
