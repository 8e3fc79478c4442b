#include <stdio.h>
int main(void) { puts("fzfs"); return 0; }
