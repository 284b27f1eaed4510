/**
 * Update a product's title and one metadata key through updateProductsWorkflow:
 *
 *   npx medusa exec ./src/scripts/update-product.ts <handle> <title> <key> <value>
 *
 * Medusa merges the metadata it is given into the stored one. Prints
 * `RESULT {"id","title","metadata"}` as Medusa returns the product.
 */
import type { ExecArgs } from "@medusajs/framework/types"
import { updateProductsWorkflow } from "@medusajs/medusa/core-flows"
import { productByHandle, report } from "./lib"

export default async function updateProduct({ container, args }: ExecArgs) {
  const [handle, title, key, value] = args ?? []
  if (!handle || !title || !key) throw new Error("usage: update-product.ts <handle> <title> <key> <value>")
  const product = await productByHandle(container, handle)
  const { result } = await updateProductsWorkflow(container).run({
    input: { selector: { id: product.id }, update: { title, metadata: { [key]: value ?? "" } } },
  })
  const updated = result.find((p) => p.id === product.id)!
  report({ id: updated.id, title: updated.title, metadata: updated.metadata })
}
